/* Exported wrappers of DPDK's static-inline functions and of set-up
 * sequences whose configuration structs are easier to fill in C. */
#include <string.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

int fulva_eal_init(int argc, char **argv) { return rte_eal_init(argc, argv); }
int fulva_eal_cleanup(void) { return rte_eal_cleanup(); }
int fulva_errno(void) { return rte_errno; }
const char *fulva_strerror(int err) { return rte_strerror(err); }

struct rte_mempool *fulva_pktmbuf_pool_create(const char *name, unsigned n, unsigned cache, uint16_t data_room) {
    return rte_pktmbuf_pool_create(name, n, cache, 0, data_room, (int)rte_socket_id());
}
void fulva_mempool_free(struct rte_mempool *mp) { rte_mempool_free(mp); }

uint16_t fulva_port_count(void) { return rte_eth_dev_count_avail(); }
int fulva_port_by_name(const char *name, uint16_t *port) { return rte_eth_dev_get_port_by_name(name, port); }

/* One RX and one TX queue, default configuration, started. */
int fulva_port_start(uint16_t port, uint16_t rx_desc, uint16_t tx_desc, struct rte_mempool *mp) {
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof(conf));
    int rc = rte_eth_dev_configure(port, 1, 1, &conf);
    if (rc < 0) return rc;
    uint16_t rxd = rx_desc, txd = tx_desc;
    rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd);
    if (rc < 0) return rc;
    int socket = rte_eth_dev_socket_id(port);
    if (socket < 0) socket = (int)rte_socket_id();
    rc = rte_eth_rx_queue_setup(port, 0, rxd, (unsigned)socket, NULL, mp);
    if (rc < 0) return rc;
    rc = rte_eth_tx_queue_setup(port, 0, txd, (unsigned)socket, NULL);
    if (rc < 0) return rc;
    rc = rte_eth_dev_start(port);
    if (rc < 0) return rc;
    rte_eth_promiscuous_enable(port); /* not every PMD supports it; harmless */
    return 0;
}

int fulva_port_stop(uint16_t port) {
    int rc = rte_eth_dev_stop(port);
    rte_eth_dev_close(port);
    return rc;
}

int fulva_port_mac(uint16_t port, uint8_t out[6]) {
    struct rte_ether_addr addr;
    int rc = rte_eth_macaddr_get(port, &addr);
    if (rc == 0) memcpy(out, addr.addr_bytes, 6);
    return rc;
}

int fulva_port_link_up(uint16_t port) {
    struct rte_eth_link link;
    memset(&link, 0, sizeof(link));
    if (rte_eth_link_get_nowait(port, &link) < 0) return -1;
    return link.link_status == RTE_ETH_LINK_UP;
}

uint16_t fulva_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}
uint16_t fulva_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *fulva_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
void fulva_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
uint8_t *fulva_pktmbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t fulva_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint16_t fulva_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
uint8_t *fulva_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return (uint8_t *)rte_pktmbuf_append(m, len); }
