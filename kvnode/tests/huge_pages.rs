//! A node turns transparent huge pages off for its process unless told to
//! keep them (`--transparent-huge-pages`). The flag is process-wide, so this
//! file is its own test process and holds a single test.

use fulva_kvnode::{transparent_huge_pages_disabled, NodeConfig};

#[tokio::test]
async fn a_node_turns_transparent_huge_pages_off_unless_allowed() {
    // The flag is inherited: a parent that set it leaves this test nothing to see.
    let before = transparent_huge_pages_disabled().unwrap();
    if before {
        eprintln!("transparent huge pages were already off for this process (inherited)");
    }

    let allowed = fulva_kvnode::start(NodeConfig { transparent_huge_pages: true, ..NodeConfig::loopback(0) })
        .await
        .unwrap();
    assert_eq!(
        transparent_huge_pages_disabled().unwrap(),
        before,
        "a node allowed huge pages changed the flag"
    );

    let default = fulva_kvnode::start(NodeConfig::loopback(1)).await.unwrap();
    assert!(transparent_huge_pages_disabled().unwrap(), "a node with the default settings turned them off");

    allowed.shutdown().await;
    default.shutdown().await;
}
