//! A multi-get whose values do not fit one reply datagram: the node refuses
//! it with TooLarge (never a reply it cannot send), and the client falls back
//! to one read per key, so `mget` of large values works.

use fulva_local::{LocalCluster, LocalClusterConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_get_of_values_too_large_for_one_reply_still_returns_them_all() {
    let cluster =
        LocalCluster::start(LocalClusterConfig { nodes: 1, shards: 1, ..Default::default() }).await.unwrap();
    let client = cluster.client().await.unwrap();
    let big = |i: u8| vec![i; 40_000];
    client.put("k1", big(1)).await.unwrap();
    client.put("k2", big(2)).await.unwrap();
    let values = client.multi_get(&["k1", "k2", "absent"]).await.unwrap();
    assert_eq!(values[0].as_deref(), Some(big(1).as_slice()));
    assert_eq!(values[1].as_deref(), Some(big(2).as_slice()));
    assert_eq!(values[2], None);
}
