//! A member that loses its assignment aborts, it does not commit: two `weir run` processes
//! of one application share the raw topic; one is paused (SIGSTOP) for longer than the
//! session timeout while records flow, so the group gives all partitions to the other. When
//! it resumes, its revoke callback finds the assignment lost and aborts the open transaction
//! (whose offsets belong to the other member by now), its fenced producer is replaced, and it
//! rejoins. Afterwards every raw offset has exactly one fate and both processes still run.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{committed, ends};
use common::users::raw_record;
use common::weir::Topics;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const PARTITIONS: i32 = 4;
const RECORDS: usize = 60_000;

fn signal(child: &common::Guard, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[test]
fn a_member_paused_past_its_session_aborts_instead_of_committing_and_rejoins() {
    let t = Topics::create("weir-lost", PARTITIONS);
    let dir = common::scratch_dir("weir-lost");
    let users = common::weir::users_toml();
    let start = |instance: &str| {
        let log = std::fs::File::create(dir.join(format!("{instance}.log"))).unwrap();
        common::Guard(
            t.command(&[
                "run",
                users.to_str().unwrap(),
                "--instance",
                instance,
                "--subtopologies",
                "0",
                "--no-http",
            ])
            .env("WEIR_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir run"),
        )
    };
    let mut a = start("a");
    // records flow for about 40 s, about 1,500 a second
    let producer = {
        let raw = t.raw.clone();
        std::thread::spawn(move || {
            let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", common::bootstrap())
                .set("linger.ms", "5")
                .create()
                .unwrap();
            for i in 0..RECORDS {
                let (value, _) = raw_record(i);
                let key = format!("user-{i}");
                p.send(
                    BaseRecord::to(&raw)
                        .partition((i % PARTITIONS as usize) as i32)
                        .key(&key)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)
                .unwrap();
                if i % 150 == 149 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            p.flush(Duration::from_secs(60)).unwrap();
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let mut b = start("b");
    std::thread::sleep(Duration::from_secs(5));
    // past the session timeout (10 s) and the transaction timeout (10 s)
    signal(&a, "-STOP");
    std::thread::sleep(Duration::from_secs(16));
    signal(&a, "-CONT");
    producer.join().unwrap();

    let end = ends(&t.raw, PARTITIONS);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(&t.app, &t.raw, PARTITIONS) != end {
        for (name, c) in [("a", &mut a), ("b", &mut b)] {
            if let Some(status) = c.try_wait().unwrap() {
                panic!(
                    "weir run {name} exited ({status}); logs in {}",
                    dir.display()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group never committed the raw topic's end; logs in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for c in [&a, &b] {
        signal(c, "-TERM");
    }
    for (name, c) in [("a", &mut a), ("b", &mut b)] {
        let status = c.wait().unwrap();
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();
        let tail: Vec<&str> = log.lines().rev().take(12).collect::<Vec<_>>();
        assert!(
            status.success(),
            "weir run {name} stopped with {status}; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let log_a = std::fs::read_to_string(dir.join("a.log")).unwrap();
    assert!(
        log_a.contains("assignment lost: aborting the open transaction"),
        "the paused member aborts when it finds its assignment lost; its log:\n{log_a}"
    );
    let fates = common::fates::of(&t.raw, &t.clean, &t.dlq, PARTITIONS);
    common::fates::assert_exactly_once(&fates, &end);
    let _ = std::io::stderr().flush();
    std::fs::remove_dir_all(&dir).ok();
}
