//! Exactly once, Kafka → Kafka, against the real broker: 50,000 raw records (10% invalid in
//! eight ways, malformed JSON and invalid UTF-8 among them) flow through `weir run` while the
//! process is killed with SIGKILL three times at random points and restarted. Afterwards a
//! `read_committed` read of the clean and dead-letter topics holds every raw offset exactly
//! once — no loss, no duplicate — and the dead letters carry the expected reasons and the
//! original bytes.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{committed, create_topics, ends, header, read_all};
use rdkafka::message::Message;

const RECORDS: usize = 50_000;
const PARTITIONS: i32 = 4;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const FIRST: &[&str] = &[
    "ana",
    "Zoryana",
    "  ÉLODIE ",
    "پارسا",
    "o'neil",
    "Mary-Jane",
    "Jürgen",
    "Леся",
];
const LAST: &[&str] = &[
    "li",
    "Kovalenko",
    "d'arc",
    "نکو نظر",
    "SMITH-JONES",
    "Müller",
    "Українка",
];

fn valid_user(i: usize) -> String {
    let first = FIRST[i % FIRST.len()];
    let last = LAST[i % LAST.len()];
    let postcode = if i % 2 == 0 {
        serde_json::json!(10000 + i)
    } else {
        serde_json::json!(format!("PC {i}"))
    };
    serde_json::json!({
        "gender": if i % 2 == 0 { "female" } else { "male" },
        "name": {"title": "Ms", "first": first, "last": last},
        "location": {"street": {"number": i, "name": "Main Street"}, "city": "Kyiv",
                     "state": "Kyivska", "country": "Ukraine", "postcode": postcode,
                     "coordinates": {"latitude": "1.0", "longitude": "2.0"},
                     "timezone": {"offset": "+2:00", "description": "Kyiv"}},
        "email": format!("User.{i}@Example.com"),
        "login": {"uuid": format!("00000000-0000-4000-8000-{i:012}"), "username": format!("user{i}")},
        "dob": {"date": "1993-07-20T09:44:18.674Z", "age": 31},
        "registered": {"date": "2015-06-21T11:04:38.419Z", "age": 9},
        "phone": "(097) 555-12-34", "cell": "+380 97 555 1234",
        "id": {"name": "", "value": null},
        "picture": {"large": "l", "medium": "m", "thumbnail": "t"},
        "nat": "UA"
    })
    .to_string()
}

/// The raw value of record `i` and, for invalid ones, the reasons it must be dead-lettered for.
fn raw_record(i: usize) -> (Vec<u8>, Option<&'static str>) {
    if i % 10 != 0 {
        return (valid_user(i).into_bytes(), None);
    }
    let user = valid_user(i);
    let mut v: serde_json::Value = serde_json::from_str(&user).unwrap();
    match (i / 10) % 8 {
        0 => (
            user.as_bytes()[..user.len() / 2].to_vec(),
            Some("json.malformed"),
        ),
        1 => {
            let mut b = user.into_bytes();
            b.insert(20, 0xff);
            (b, Some("utf8.invalid"))
        }
        2 => {
            v["name"].as_object_mut().unwrap().remove("first");
            (v.to_string().into_bytes(), Some("field.missing:name.first"))
        }
        3 => {
            v["email"] = "not-an-email".into();
            (v.to_string().into_bytes(), Some("email.invalid"))
        }
        4 => (b"[1,2,3]".to_vec(), Some("record.not_object")),
        5 => {
            v["dob"]["age"] = "thirty".into();
            (v.to_string().into_bytes(), Some("field.type:dob.age"))
        }
        6 => {
            v["location"]["city"] = "x".repeat(150).into();
            (
                v.to_string().into_bytes(),
                Some("field.too_long:location.city"),
            )
        }
        _ => {
            v["dob"]["date"] = "31/02/1990".into();
            (v.to_string().into_bytes(), Some("date.invalid:dob.date"))
        }
    }
}

fn produce_raw(topic: &str) {
    // about 10,000 records/s, so the kills land while records flow
    common::kafka::produce_paced(
        topic,
        PARTITIONS,
        RECORDS,
        |i| raw_record(i).0,
        (1000, Duration::from_millis(100)),
    );
}

struct Weir {
    dir: PathBuf,
    env: Vec<(String, String)>,
    starts: usize,
}

impl Weir {
    fn start(&mut self) -> common::Guard {
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("weir-{}.log", self.starts))).unwrap();
        let child = Command::new(common::weir_bin())
            .args([
                "run",
                users_toml().to_str().unwrap(),
                "--instance",
                "eos-test",
                "--no-http",
                // records read together are processed on two threads: what is killed is a
                // loop with records in hand on both
                "--processing-threads",
                "2",
            ])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir run");
        common::Guard(child)
    }
}

fn users_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/users.toml")
}

#[test]
fn every_raw_offset_exactly_once_across_clean_and_dead_letter_topics_despite_sigkill() {
    let raw = common::unique("weir-eos-raw");
    let clean = common::unique("weir-eos-clean");
    let dlq = common::unique("weir-eos-dlq");
    let app = common::unique("weir-eos-app");
    create_topics(&[&raw, &clean, &dlq], PARTITIONS);

    let dir = common::scratch_dir("weir-eos");
    let mut weir = Weir {
        dir: dir.clone(),
        env: vec![
            ("WEIR_TOPIC_RAW".into(), raw.clone()),
            ("WEIR_TOPIC_CLEAN".into(), clean.clone()),
            ("WEIR_TOPIC_DLQ".into(), dlq.clone()),
            ("WEIR_APPLICATION_ID".into(), app.clone()),
            ("WEIR_KAFKA_BOOTSTRAP".into(), common::bootstrap()),
        ],
        starts: 0,
    };

    let producer = {
        let raw = raw.clone();
        std::thread::spawn(move || produce_raw(&raw))
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    eprintln!("kill schedule seed: {seed}");
    let mut child = weir.start();
    for kill in 1..=3 {
        let wait = Duration::from_millis(1_000 + rng.below(2_500));
        std::thread::sleep(wait);
        let done: i64 = committed(&app, &raw, PARTITIONS)
            .iter()
            .map(|o| (*o).max(0))
            .sum();
        eprintln!("SIGKILL #{kill} after {wait:?}: {done} raw records committed so far");
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        child = weir.start();
    }
    producer.join().expect("producer thread");

    // wait until the group's committed offsets reach the end of the raw topic
    let end = ends(&raw, PARTITIONS);
    assert_eq!(end.iter().sum::<i64>(), RECORDS as i64);
    let mut children = [child];
    wait_until_committed(&app, &raw, &end, &mut children, &dir);
    let [child] = children;
    stop(child);

    verify_exactly_once(&raw, &clean, &dlq, &app, &end);
    std::fs::remove_dir_all(&dir).ok();
}

/// Every raw (partition, offset) exactly once across the clean and dead-letter topics, with
/// the expected reasons, bytes and keys.
fn verify_exactly_once(raw: &str, clean: &str, dlq: &str, app: &str, end: &[i64]) {
    // every raw (partition, offset) exactly once across both topics
    let mut fates: HashMap<(i32, i64), Vec<&'static str>> = HashMap::new();
    let clean_records = read_all(clean, PARTITIONS, "read_committed");
    for m in &clean_records {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let key = (
            v["source"]["partition"].as_i64().unwrap() as i32,
            v["source"]["offset"].as_i64().unwrap(),
        );
        assert_eq!(v["source"]["topic"], raw);
        fates.entry(key).or_default().push("clean");
    }
    let dead = read_all(dlq, PARTITIONS, "read_committed");
    let mut expected_invalid = 0;
    for i in 0..RECORDS {
        if raw_record(i).1.is_some() {
            expected_invalid += 1;
        }
    }
    for m in &dead {
        let p: i32 = std::str::from_utf8(header(m, "weir.errors.partition").unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let o: i64 = std::str::from_utf8(header(m, "weir.errors.offset").unwrap())
            .unwrap()
            .parse()
            .unwrap();
        // partition p, offset o holds record i = o * PARTITIONS + p
        let i = (o * PARTITIONS as i64 + p as i64) as usize;
        let (value, reason) = raw_record(i);
        let reasons = std::str::from_utf8(header(m, "weir.errors.reasons").unwrap()).unwrap();
        assert_eq!(Some(reasons), reason, "dead letter for record {i}");
        assert_eq!(
            m.payload().unwrap(),
            value.as_slice(),
            "dead letter keeps the original bytes"
        );
        assert_eq!(m.key().unwrap(), format!("user-{i}").as_bytes());
        assert_eq!(
            std::str::from_utf8(header(m, "weir.errors.application.id").unwrap()).unwrap(),
            app
        );
        fates.entry((p, o)).or_default().push("dead_letter");
    }
    let duplicates: Vec<_> = fates.iter().filter(|(_, f)| f.len() > 1).take(5).collect();
    assert!(
        duplicates.is_empty(),
        "records with more than one fate: {duplicates:?}"
    );
    let missing: Vec<(i32, i64)> = (0..PARTITIONS)
        .flat_map(|p| (0..end[p as usize]).map(move |o| (p, o)))
        .filter(|k| !fates.contains_key(k))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "raw records with no fate: {missing:?}");
    assert_eq!(fates.len(), RECORDS);
    assert_eq!(dead.len(), expected_invalid, "dead letters");
    assert_eq!(
        clean_records.len(),
        RECORDS - expected_invalid,
        "clean records"
    );
    assert_eq!(expected_invalid, RECORDS / 10);
    // clean records keep the raw record's timestamp
    assert!(clean_records
        .iter()
        .all(|m| m.timestamp().to_millis().is_some()));
}

/// Waits until the application's committed offsets reach `end`, while `children` run.
fn wait_until_committed(
    app: &str,
    raw: &str,
    end: &[i64],
    children: &mut [common::Guard],
    dir: &Path,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let c = committed(app, raw, PARTITIONS);
        if c == end {
            return;
        }
        for child in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "weir run exited early ({status}); logs in {}",
                    dir.display()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "committed {c:?} never reached {end:?}; logs in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop(mut child: common::Guard) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(
        exit.success(),
        "weir run did not stop cleanly on SIGTERM: {exit}"
    );
}

/// The number of records a stopped `weir run` reports in its log.
fn records_in_log(path: &Path) -> u64 {
    let log = std::fs::read_to_string(path).unwrap();
    log.lines()
        .filter(|l| l.contains(" stopped records="))
        .filter_map(|l| {
            l.split(" stopped records=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .next_back()
        .unwrap_or_else(|| panic!("no summary line in {}:\n{log}", path.display()))
}

#[test]
fn two_processes_of_one_application_share_the_partitions_exactly_once() {
    let raw = common::unique("weir-scale-raw");
    let clean = common::unique("weir-scale-clean");
    let dlq = common::unique("weir-scale-dlq");
    let app = common::unique("weir-scale-app");
    create_topics(&[&raw, &clean, &dlq], PARTITIONS);
    let dir = common::scratch_dir("weir-scale");
    let env = [
        ("WEIR_TOPIC_RAW".to_owned(), raw.clone()),
        ("WEIR_TOPIC_CLEAN".to_owned(), clean.clone()),
        ("WEIR_TOPIC_DLQ".to_owned(), dlq.clone()),
        ("WEIR_APPLICATION_ID".to_owned(), app.clone()),
        ("WEIR_KAFKA_BOOTSTRAP".to_owned(), common::bootstrap()),
    ];
    let start = |instance: &str| {
        let log = std::fs::File::create(dir.join(format!("{instance}.log"))).unwrap();
        common::Guard(
            Command::new(common::weir_bin())
                .args([
                    "run",
                    users_toml().to_str().unwrap(),
                    "--instance",
                    instance,
                    "--no-http",
                ])
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("WEIR_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start weir run"),
        )
    };
    let a = start("a");
    let producer = {
        let raw = raw.clone();
        std::thread::spawn(move || produce_raw(&raw))
    };
    // the second process joins while records flow: the first gives up partitions after
    // committing its open transaction
    std::thread::sleep(Duration::from_millis(1500));
    let b = start("b");
    producer.join().expect("producer thread");
    let end = ends(&raw, PARTITIONS);
    let mut children = [a, b];
    wait_until_committed(&app, &raw, &end, &mut children, &dir);
    let [a, b] = children;
    stop(a);
    stop(b);
    verify_exactly_once(&raw, &clean, &dlq, &app, &end);
    let (ra, rb) = (
        records_in_log(&dir.join("a.log")),
        records_in_log(&dir.join("b.log")),
    );
    assert!(
        ra > 0 && rb > 0,
        "both processes take part: a read {ra}, b read {rb}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
