//! The test cluster itself: three real nats-servers that form a JetStream cluster, elect a
//! new meta leader when theirs is killed, and let a restarted node catch up.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use test_support::NatsCluster;
use tokio::task::block_in_place;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_the_death_of_any_one_and_the_dead_one_catches_up() {
    let mut cluster = block_in_place(NatsCluster::start);
    assert_eq!(cluster.len(), 3);
    let leader = block_in_place(|| cluster.wait_meta_leader());

    // A client says which node it is on; it learns the others from that node.
    let on = (leader + 1) % 3;
    let client = async_nats::connect(cluster.url(on)).await.unwrap();
    assert_eq!(client.server_info().server_name, cluster.name(on));
    assert_eq!(
        client.server_info().cluster.as_deref(),
        Some(test_support::CLUSTER_NAME)
    );
    assert_eq!(
        client.server_info().connect_urls.len(),
        3,
        "it knows all three"
    );

    let js = jetstream::new(client.clone());
    timeout(
        WAIT,
        js.create_stream(stream::Config {
            name: "T".into(),
            subjects: vec!["t.>".into()],
            num_replicas: 3,
            storage: stream::StorageType::File,
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    for n in 0..10u32 {
        let ack = js.publish("t.a", n.to_string().into()).await.unwrap();
        timeout(WAIT, ack).await.unwrap().unwrap();
    }

    // The meta leader dies: another is elected, and the stream still takes writes.
    cluster.kill(leader);
    let next = block_in_place(|| cluster.wait_meta_leader());
    assert_ne!(next, leader);
    let stream_leader = block_in_place(|| cluster.wait_stream_leader("T"));
    assert_ne!(stream_leader, leader, "a dead node leads nothing");
    let ack = js.publish("t.a", "after".into()).await.unwrap();
    let ack = timeout(WAIT, ack).await.unwrap().unwrap();
    assert_eq!(ack.sequence, 11);

    // The client's own node dies: it reconnects to the survivor.
    cluster.kill(on);
    block_in_place(|| {
        cluster.wait("the client to move to the last node", || {
            let now = client.server_info();
            (client.connection_state() == async_nats::connection::State::Connected
                && now.server_name != cluster.name(on))
            .then_some(())
        })
    });

    // Both come back with their stores and catch up with what they missed.
    block_in_place(|| {
        cluster.restart(leader);
        cluster.restart(on);
    });
    let ack = js.publish("t.a", "later".into()).await.unwrap();
    timeout(WAIT, ack).await.unwrap().unwrap();
    block_in_place(|| {
        for i in 0..3 {
            cluster.wait(&format!("{} to catch up", cluster.name(i)), || {
                cluster.caught_up(i, "T").then_some(())
            });
        }
    });
    let detail = cluster.stream_detail(leader, "T").unwrap();
    assert_eq!(detail["state"]["messages"], 12);
}
