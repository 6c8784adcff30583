//! The filesystem queue under concurrent writers: entries that land while a consumer starts are
//! seen exactly once and in order, and an entry is never read half-written.

use std::collections::HashSet;
use std::time::Duration;

use deployer::queue::Queue;
use tokio_util::sync::CancellationToken;

async fn drain(
    consumer: &mut deployer::queue::Consumer,
    want: usize,
    check: impl Fn(&deployer::queue::Entry),
) -> Vec<String> {
    let token = CancellationToken::new();
    let mut seen = Vec::new();
    while seen.len() < want {
        let batch = tokio::time::timeout(Duration::from_secs(60), consumer.next_batch(&token))
            .await
            .expect("entries keep coming within 60 s")
            .unwrap();
        for e in batch {
            check(&e);
            consumer.complete(&e.name).unwrap();
            seen.push(e.name);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_pushed_while_the_consumer_starts_are_seen_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path().join("q")).unwrap();
    const N: usize = 1500;
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let writer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            let mut names = Vec::new();
            for i in 0..N {
                names.push(
                    queue
                        .push(&format!("w{i}"), i.to_string().as_bytes())
                        .unwrap(),
                );
                if i == N / 3 {
                    started_tx.send(()).unwrap();
                }
            }
            names
        })
    };
    // The consumer starts (watch, then scan) while the writer is in full flow.
    started_rx.recv().unwrap();
    let mut consumer = queue.consumer().unwrap();
    let seen = drain(&mut consumer, N, |_| {}).await;
    let pushed = writer.join().unwrap();
    assert_eq!(seen.len(), N);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        N,
        "no name handed out twice"
    );
    assert_eq!(seen, pushed, "in push order");
    assert!(queue.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_entry_is_never_read_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path().join("q")).unwrap();
    let mut consumer = queue.consumer().unwrap();
    const N: usize = 40;
    const SIZE: usize = 2 * 1024 * 1024;
    let writer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                let byte = b'a' + (i % 26) as u8;
                queue.push(&format!("big{i}"), &vec![byte; SIZE]).unwrap();
            }
        })
    };
    let seen = drain(&mut consumer, N, |e| {
        assert_eq!(
            e.contents.len(),
            SIZE,
            "{} read before it was complete",
            e.name
        );
        assert!(e.contents.iter().all(|b| *b == e.contents[0]));
    })
    .await;
    writer.join().unwrap();
    assert_eq!(seen.len(), N);
    let leftovers: Vec<_> = std::fs::read_dir(queue.dir()).unwrap().collect();
    assert!(leftovers.is_empty(), "no temporaries left: {leftovers:?}");
}

/// A consumer in a new process (after a crash) gets every entry the last one did not complete,
/// including ones it had been handed and released.
#[tokio::test]
async fn uncompleted_entries_come_back_to_the_next_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path().join("q")).unwrap();
    let names: Vec<String> = (0..5)
        .map(|i| queue.push(&format!("e{i}"), b"{}").unwrap())
        .collect();
    {
        let mut first = queue.consumer().unwrap();
        let got = drain(&mut first, 5, |_| {}).await;
        assert_eq!(got, names);
    }
    assert!(queue.list().unwrap().is_empty());
    let a = queue.push("again-a", b"1").unwrap();
    let b = queue.push("again-b", b"2").unwrap();
    {
        let mut dying = queue.consumer().unwrap();
        let token = CancellationToken::new();
        let batch = dying.next_batch(&token).await.unwrap();
        assert_eq!(batch.len(), 2);
        dying.complete(&a).unwrap();
        // Dropped with `b` handed out but not completed: the "crash".
    }
    let mut next = queue.consumer().unwrap();
    let got = drain(&mut next, 1, |_| {}).await;
    assert_eq!(got, vec![b]);
}
