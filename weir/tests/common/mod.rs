//! Shared helpers for the integration tests that run against the real local stack.
//!
//! `deploy/dev test` starts Kafka and PostgreSQL and exports where they listen; these tests
//! fail with a clear message when run outside it, and never skip.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `weir` binary the tests run: `WEIR_TEST_BIN` when it is set (`deploy/dev test` sets
/// it to the release binary it has just built, the one that ships: golden_process took 44 s
/// instead of 113, eos_kafka 36 instead of 56, faults 94 instead of 116), else this build's.
pub fn weir_bin() -> std::path::PathBuf {
    std::env::var_os("WEIR_TEST_BIN").map_or_else(|| env!("CARGO_BIN_EXE_weir").into(), Into::into)
}

/// The standard output of a command that must have succeeded (its standard error in the
/// failure otherwise).
pub fn stdout_of(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Reads a setting exported by `deploy/dev test`.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through `deploy/dev test`")
    })
}

/// Kafka bootstrap servers of the local stack.
pub fn bootstrap() -> String {
    env("WEIR_KAFKA_BOOTSTRAP")
}

/// A name no other test (or earlier run) uses: prefix, process id, time and a counter.
/// A fresh directory for a test's files (logs, topology copies), under cargo's
/// `target/tmp`: kept after the run for a look at a failure, and never in the system's /tmp.
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub mod kafka {
    //! Kafka helpers for the integration tests: topics, whole-topic reads, group offsets.

    use std::time::{Duration, Instant};

    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::OwnedMessage;
    use rdkafka::{Message, Offset, TopicPartitionList};

    pub const TIMEOUT: Duration = Duration::from_secs(30);

    /// Produces `count` records at a steady pace with an idempotent producer: record `i`,
    /// keyed `user-{i}`, into partition `i % partitions`, a pause of `pause` after every
    /// `every` records (`usize::MAX`: no pause); a full queue is waited out, never an error.
    /// Records up to 2 MB go (the refusal tests send some past a topic's limit).
    pub fn produce_paced(
        topic: &str,
        partitions: i32,
        count: usize,
        value_of: impl Fn(usize) -> Vec<u8>,
        (every, pause): (usize, Duration),
    ) {
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", super::bootstrap())
            .set("enable.idempotence", "true")
            .set("message.max.bytes", "2000000")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        for i in 0..count {
            let value = value_of(i);
            let key = format!("user-{i}");
            let mut record = BaseRecord::to(topic)
                .partition((i % partitions as usize) as i32)
                .key(&key)
                .payload(&value);
            while let Err((_, back)) = producer.send(record) {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            if i % every == every - 1 {
                std::thread::sleep(pause);
            }
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
    }

    pub fn create_topics(names: &[&str], partitions: i32) {
        create_topics_with(names, partitions, &[]);
    }

    /// Creates topics with topic configs (`max.message.bytes`, …).
    pub fn create_topics_with(names: &[&str], partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", super::bootstrap())
            .create()
            .expect("admin client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| {
                configs.iter().fold(
                    NewTopic::new(n, partitions, TopicReplication::Fixed(1)),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let results = rt
            .block_on(admin.create_topics(
                &topics,
                &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
            ))
            .expect("create_topics request");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    }

    /// Every record of every partition, up to the end, with the given isolation level.
    pub fn read_all(topic: &str, partitions: i32, isolation: &str) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", super::bootstrap())
            .set("group.id", super::unique("weir-test-reader"))
            .set("isolation.level", isolation)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
            ends.push(
                consumer
                    .fetch_watermarks(topic, p, TIMEOUT)
                    .expect("watermarks")
                    .1,
            );
        }
        consumer.assign(&tpl).expect("assign");
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let positions = consumer.position().unwrap();
            let done = (0..partitions).all(|p| {
                let pos = positions
                    .find_partition(topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1);
                pos >= ends[p as usize] || ends[p as usize] == 0
            });
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reading {topic} to its end took too long"
            );
            if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
                seen.push(msg.expect("consume").detach());
            }
        }
        seen
    }

    /// The group's committed offset per partition (-1 where none).
    pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", super::bootstrap())
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let c = consumer
            .committed_offsets(tpl, TIMEOUT)
            .expect("committed offsets");
        (0..partitions)
            .map(|p| {
                c.find_partition(topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1)
            })
            .collect()
    }

    /// The end offset of every partition.
    pub fn ends(topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", super::bootstrap())
            .create()
            .expect("consumer");
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, TIMEOUT)
                    .expect("watermarks")
                    .1
            })
            .collect()
    }

    pub fn header<'a>(msg: &'a OwnedMessage, key: &str) -> Option<&'a [u8]> {
        use rdkafka::message::Headers;
        msg.headers()?.iter().find(|h| h.key == key)?.value
    }
}

/// The body of a successful GET, as text (panics on a failed request or an error status).
pub fn get_text(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub mod http {
    //! A tiny HTTP/1.1 server on loopback that answers with scripted responses, in order
    //! (the last one repeats), for testing HTTP clients against real sockets.

    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone)]
    pub struct Reply {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        /// Wait this long before answering.
        pub delay: Duration,
    }

    impl Reply {
        pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
            Self {
                status,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: body.into(),
                delay: Duration::ZERO,
            }
        }

        pub fn header(mut self, k: &str, v: &str) -> Self {
            self.headers.push((k.into(), v.into()));
            self
        }

        pub fn delay(mut self, d: Duration) -> Self {
            self.delay = d;
            self
        }
    }

    pub struct Server {
        pub url: String,
        /// The request lines received, in order.
        pub requests: Arc<Mutex<Vec<String>>>,
    }

    pub fn serve(replies: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let reply = replies[n.min(replies.len() - 1)].clone();
                n += 1;
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    seen.lock()
                        .unwrap()
                        .push(head.lines().next().unwrap_or("").to_owned());
                    std::thread::sleep(reply.delay);
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        reply.status,
                        reply.body.len()
                    );
                    for (k, v) in &reply.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let _ = stream.write_all(out.as_bytes());
                    let _ = stream.write_all(&reply.body);
                });
            }
        });
        Server { url, requests }
    }
}

pub mod windows {
    //! Clean records laid out in windows, for the PostgreSQL sink's seal and audit tests.

    use std::time::Duration;

    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use weir_sinks::postgres::admin::WindowSpec;
    use weir_sinks::postgres::PostgresSinkConfig;

    /// Writes `records` clean records (`<name>{i}@example.com`) spread evenly over the two
    /// windows from `base` into 2 partitions of `topic`, then one record per partition four
    /// windows later, so the watermark passes both windows' end plus grace.
    pub fn produce_two(topic: &str, base: i64, window_ms: i64, records: i64, name: &str) {
        let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", super::bootstrap())
            .create()
            .unwrap();
        for i in 0..records + 2 {
            let ts = if i < records {
                base + i * 2 * window_ms / records
            } else {
                base + 4 * window_ms
            };
            let partition = (i % 2) as i32;
            let last = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
            let v = serde_json::json!({
                "user_uuid": format!("00000000-0000-4000-8000-{i:012}"), "title": "Mr", "first_name": format!("Name{i}"),
                "last_name": last, "full_name": format!("Name{i} {last}"), "gender": "male", "email": format!("{name}{i}@example.com"),
                "street_address": null, "city": "Oslo", "state": null, "country": "Norway", "postcode": "0150", "phone": null,
                "cell": null, "dob": null, "age": null, "registered_at": null, "picture_thumbnail": null, "nat": "NO",
                "source": {"topic": "raw", "partition": partition, "offset": i, "timestamp": ts}
            })
            .to_string();
            producer
                .send(
                    BaseRecord::<str, str>::to(topic)
                        .partition(partition)
                        .key("k")
                        .payload(&v)
                        .timestamp(ts),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// The `users` sink of `users.toml` for application `app`: its config and window spec.
    pub fn users_sink(app: &str, window_ms: i64) -> (PostgresSinkConfig, WindowSpec) {
        let t = weir_topology::load_file(&super::weir::users_toml(), &weir::registry::registry())
            .unwrap();
        let cfg = t
            .node("users")
            .unwrap()
            .config::<PostgresSinkConfig>()
            .unwrap()
            .clone();
        let spec = WindowSpec {
            sink_id: format!("{app}/users"),
            window_ms,
            grace_ms: cfg.grace.as_millis() as i64,
        };
        (cfg, spec)
    }
}

pub mod pg {
    //! PostgreSQL helpers: a fresh database per test with `schema.sql` applied.

    use tokio_postgres::{Client, NoTls};

    pub const SCHEMA: &str = include_str!("../../../schema.sql");

    pub async fn connect(url: &str) -> Client {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to PostgreSQL: {e}"));
        tokio::spawn(connection);
        client
    }

    /// The URL of another database on the same server.
    pub fn with_database(url: &str, db: &str) -> String {
        let (base, _) = url.rsplit_once('/').expect("database URL ends in /dbname");
        format!("{base}/{db}")
    }

    /// [`fresh_database`] from a test that is not async.
    pub fn fresh_database_now(prefix: &str) -> String {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fresh_database(prefix))
    }

    /// Creates a database with the schema applied; returns its URL.
    pub async fn fresh_database(prefix: &str) -> String {
        let admin_url = super::env("WEIR_PG_ADMIN_URL");
        let admin = connect(&admin_url).await;
        let db = super::unique(prefix);
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let url = with_database(&admin_url, &db);
        connect(&url)
            .await
            .batch_execute(SCHEMA)
            .await
            .expect("schema.sql");
        url
    }
}

/// A child process that is killed when the guard drops, so a failing test leaves nothing
/// running.
pub struct Guard(pub std::process::Child);

impl std::ops::Deref for Guard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub mod weir {
    //! Running the `weir` binary in a test, on the test's own topics and application id.

    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    /// `topology/users.toml` of this repository.
    pub fn users_toml() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/users.toml")
    }

    /// A test's own raw, clean and dead-letter topics and application id: the variables
    /// `users.toml` reads.
    pub struct Topics {
        pub raw: String,
        pub clean: String,
        pub dlq: String,
        pub app: String,
        pub partitions: i32,
    }

    impl Topics {
        /// Creates the three topics.
        pub fn create(prefix: &str, partitions: i32) -> Self {
            let t = Self::named(prefix, partitions);
            super::kafka::create_topics(&[&t.raw, &t.clean, &t.dlq], partitions);
            t
        }

        /// Fresh names, no topics yet (for topics with configs of their own).
        pub fn named(prefix: &str, partitions: i32) -> Self {
            Topics {
                raw: super::unique(&format!("{prefix}-raw")),
                clean: super::unique(&format!("{prefix}-clean")),
                dlq: super::unique(&format!("{prefix}-dlq")),
                app: super::unique(&format!("{prefix}-app")),
                partitions,
            }
        }

        /// `weir ARGS` with this test's topics, application id and the local broker.
        pub fn command(&self, args: &[&str]) -> Command {
            let mut c = Command::new(super::weir_bin());
            c.args(args)
                .env("WEIR_TOPIC_RAW", &self.raw)
                .env("WEIR_TOPIC_CLEAN", &self.clean)
                .env("WEIR_TOPIC_DLQ", &self.dlq)
                .env("WEIR_APPLICATION_ID", &self.app)
                .env("WEIR_KAFKA_BOOTSTRAP", super::bootstrap())
                .env("WEIR_LOG", "warn");
            c
        }

        /// `weir run users.toml` with its HTTP server on `port` and the PostgreSQL sink on
        /// `database_url`, until the guard drops; returns once `/healthz` answers.
        pub fn serve(
            &self,
            instance: &str,
            database_url: &str,
            port: u16,
            env: &[(&str, &str)],
        ) -> super::Guard {
            let users = users_toml();
            let mut child = super::Guard(
                self.command(&["run", users.to_str().unwrap(), "--instance", instance])
                    .env("WEIR_DATABASE_URL", database_url)
                    .env("WEIR_HTTP_PORT", port.to_string())
                    .envs(env.iter().copied())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start weir run"),
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
                .call()
                .is_err()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the HTTP server never answered"
                );
                assert!(child.try_wait().unwrap().is_none(), "weir run exited");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            child
        }

        /// [`Topics::serve`] on a fresh database and a free port (outside an async runtime);
        /// returns the process and the port.
        pub fn serve_fresh(&self, instance: &str, env: &[(&str, &str)]) -> (super::Guard, u16) {
            let url = super::pg::fresh_database_now(&format!("weir_{instance}"));
            let port = super::free_port();
            (self.serve(instance, &url, port, env), port)
        }

        /// Runs `weir ARGS` to the end; panics with its stderr when it fails.
        pub fn output(&self, args: &[&str]) -> (String, String) {
            let out = self
                .command(args)
                .stdin(Stdio::null())
                .output()
                .expect("run weir");
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
            assert!(
                out.status.success(),
                "weir {args:?} failed ({}):\n{stdout}\n{stderr}",
                out.status
            );
            (stdout, stderr)
        }
    }
}

pub mod users {
    //! Raw randomuser-shaped records for tests that run the users topology.

    /// A valid raw user `i`, in many scripts, with a numeric postcode for even `i`.
    pub fn valid_user(i: usize) -> String {
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

    /// Raw record `i`: every tenth is bad in one of eight ways; the reason its dead letter
    /// must give comes with it.
    pub fn raw_record(i: usize) -> (Vec<u8>, Option<&'static str>) {
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
}

pub mod fates {
    //! What became of every raw record: its fates in the clean and dead-letter topics, by
    //! the source coordinates they carry.

    use std::collections::HashMap;

    use rdkafka::message::OwnedMessage;
    use rdkafka::Message;

    /// One fate of a raw record.
    pub enum Fate {
        Clean(serde_json::Value),
        Dead(OwnedMessage),
    }

    impl Fate {
        pub fn dead(&self) -> Option<&OwnedMessage> {
            match self {
                Fate::Dead(m) => Some(m),
                Fate::Clean(_) => None,
            }
        }

        /// The reason codes of a dead letter (empty for a clean record).
        pub fn reasons(&self) -> String {
            self.dead()
                .and_then(|m| super::kafka::header(m, "weir.errors.reasons"))
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .unwrap_or_default()
        }
    }

    /// Every fate of the records of `raw`, by (partition, offset): the committed clean records
    /// and the committed dead letters whose source is `raw`.
    pub fn of(
        raw: &str,
        clean: &str,
        dlq: &str,
        partitions: i32,
    ) -> HashMap<(i32, i64), Vec<Fate>> {
        let mut fates: HashMap<(i32, i64), Vec<Fate>> = HashMap::new();
        for m in super::kafka::read_all(clean, partitions, "read_committed") {
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("clean JSON");
            if v["source"]["topic"] != raw {
                continue;
            }
            let key = (
                v["source"]["partition"].as_i64().unwrap() as i32,
                v["source"]["offset"].as_i64().unwrap(),
            );
            fates.entry(key).or_default().push(Fate::Clean(v));
        }
        for m in super::kafka::read_all(dlq, partitions, "read_committed") {
            let h = |k: &str| {
                super::kafka::header(&m, k).map(|v| String::from_utf8_lossy(v).into_owned())
            };
            if h("weir.errors.topic").as_deref() != Some(raw) {
                continue;
            }
            let key = (
                h("weir.errors.partition").unwrap().parse().unwrap(),
                h("weir.errors.offset").unwrap().parse().unwrap(),
            );
            fates.entry(key).or_default().push(Fate::Dead(m));
        }
        fates
    }

    /// Panics unless every offset below `ends[p]` of each partition has exactly one fate.
    pub fn assert_exactly_once(fates: &HashMap<(i32, i64), Vec<Fate>>, ends: &[i64]) {
        let duplicates: Vec<_> = fates
            .iter()
            .filter(|(_, f)| f.len() > 1)
            .map(|(k, _)| *k)
            .take(5)
            .collect();
        let missing: Vec<(i32, i64)> = (0..ends.len() as i32)
            .flat_map(|p| (0..ends[p as usize]).map(move |o| (p, o)))
            .filter(|k| !fates.contains_key(k))
            .take(5)
            .collect();
        let total: i64 = ends.iter().sum();
        assert!(
            duplicates.is_empty() && missing.is_empty() && fates.len() as i64 == total,
            "exactly once broken: {} raw records, {} with a fate; more than one fate: {duplicates:?}; no fate: {missing:?}",
            total,
            fates.len()
        );
    }
}

pub mod api {
    //! Weir's HTTP API from a test.

    /// Weir's HTTP API at `base` (`http://127.0.0.1:PORT`).
    pub struct Http {
        pub base: String,
        pub agent: ureq::Agent,
    }

    impl Http {
        /// A JSON call; the status and the body (as a JSON string when it is not JSON).
        pub fn call(
            &self,
            method: &str,
            path: &str,
            token: Option<&str>,
        ) -> (u16, serde_json::Value) {
            let url = format!("{}{path}", self.base);
            let mut response = match (method, token) {
                ("GET", None) => self.agent.get(&url).call(),
                ("GET", Some(t)) => self
                    .agent
                    .get(&url)
                    .header("Authorization", &format!("Bearer {t}"))
                    .call(),
                ("POST", None) => self.agent.post(&url).send_empty(),
                ("POST", Some(t)) => self
                    .agent
                    .post(&url)
                    .header("Authorization", &format!("Bearer {t}"))
                    .send_empty(),
                _ => unreachable!(),
            }
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_string().unwrap();
            (
                status,
                serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
            )
        }

        /// A GET of text.
        pub fn text(&self, path: &str) -> (u16, String) {
            let mut r = self
                .agent
                .get(&format!("{}{path}", self.base))
                .call()
                .unwrap();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
        }
    }

    impl Http {
        /// The API of a server on this machine's `port`.
        pub fn local(port: u16) -> Self {
            Self {
                base: format!("http://127.0.0.1:{port}"),
                agent: ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(std::time::Duration::from_secs(600)))
                    .build()
                    .into(),
            }
        }
    }
}

pub mod stack {
    //! A Kafka broker and a PostgreSQL cluster of a test's own, which it may kill, pause and
    //! restart without disturbing the shared stack: the broker from the jars `deploy/dev`
    //! fetched (`WEIR_KAFKA_LIBS`) with `deploy/kafka/server.properties`, PostgreSQL from the
    //! system's binaries (`WEIR_PG_BIN_DIR`).

    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn wait_port(port: u16, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{what} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn signal(pid: u32, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid}");
    }

    /// A one-node Kafka (KRaft) on free ports, data in `dir`.
    pub struct Kafka {
        pub port: u16,
        dir: PathBuf,
        child: Option<super::Guard>,
        starts: usize,
    }

    impl Kafka {
        pub fn start(dir: &Path) -> Self {
            let libs = super::env("WEIR_KAFKA_LIBS");
            let (port, controller) = (super::free_port(), super::free_port());
            let data = dir.join("kafka-data");
            std::fs::create_dir_all(&data).unwrap();
            let props = std::fs::read_to_string(repo().join("deploy/kafka/server.properties"))
                .unwrap()
                .replace("@HOST@", "127.0.0.1")
                .replace("@PORT@", &port.to_string())
                .replace("@CONTROLLER_PORT@", &controller.to_string())
                .replace("@DATA@", data.to_str().unwrap())
                // its SASL_SSL listener on a port of its own, with deploy/dev's certificate
                .replace("@SASL_PORT@", &super::free_port().to_string())
                .replace(
                    "@TLS@",
                    Path::new(&super::env("WEIR_KAFKA_CA"))
                        .parent()
                        .unwrap()
                        .to_str()
                        .unwrap(),
                )
                .replace(
                    "@KEYSTORE_PASSWORD@",
                    &super::env("WEIR_KAFKA_KEYSTORE_PASSWORD"),
                );
            let props_path = dir.join("server.properties");
            // it holds the keystore's password
            std::io::Write::write_all(
                &mut std::os::unix::fs::OpenOptionsExt::mode(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true),
                    0o600,
                )
                .open(&props_path)
                .unwrap(),
                props.as_bytes(),
            )
            .unwrap();
            let tool = |args: &[&str]| {
                let out = Command::new("java")
                    .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"])
                    .arg(format!(
                        "-Dlog4j2.configurationFile={}",
                        repo()
                            .join("deploy/kafka/log4j2-tools.properties")
                            .display()
                    ))
                    .args(["-cp", &format!("{libs}/*")])
                    .args(args)
                    .output()
                    .expect("run a Kafka tool");
                assert!(
                    out.status.success(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap()
            };
            let id = tool(&["kafka.tools.StorageTool", "random-uuid"]);
            tool(&[
                "kafka.tools.StorageTool",
                "format",
                "-t",
                id.trim(),
                "-c",
                props_path.to_str().unwrap(),
            ]);
            let mut k = Kafka {
                port,
                dir: dir.to_owned(),
                child: None,
                starts: 0,
            };
            k.restart();
            k
        }

        pub fn bootstrap(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        /// Starts the broker (again), and waits until it listens.
        pub fn restart(&mut self) {
            self.starts += 1;
            let libs = super::env("WEIR_KAFKA_LIBS");
            let log =
                std::fs::File::create(self.dir.join(format!("kafka-{}.log", self.starts))).unwrap();
            let child = Command::new("java")
                .args([
                    "-Xms128m",
                    "-Xmx512m",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                ])
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    repo().join("deploy/kafka/log4j2.properties").display()
                ))
                .args(["-cp", &format!("{libs}/*"), "kafka.Kafka"])
                .arg(self.dir.join("server.properties"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("start the broker");
            self.child = Some(super::Guard(child));
            wait_port(self.port, "the broker", Duration::from_secs(90));
        }

        /// Runs a Kafka command-line tool against this broker (its main class, then its
        /// arguments; `--bootstrap-server` is added): what it printed, errors included.
        pub fn tool(&self, class: &str, args: &[&str]) -> String {
            let out = Command::new("java")
                .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"])
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    repo()
                        .join("deploy/kafka/log4j2-tools.properties")
                        .display()
                ))
                .args(["-cp", &format!("{}/*", super::env("WEIR_KAFKA_LIBS"))])
                .arg(class)
                .args(["--bootstrap-server", &self.bootstrap()])
                .args(args)
                .output();
            match out {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("{class} did not start: {e}"),
            }
        }

        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                c.kill().unwrap();
                c.wait().unwrap();
            }
        }

        pub fn pause(&self) {
            signal(self.child.as_ref().expect("running").id(), "-STOP");
        }

        pub fn resume(&self) {
            signal(self.child.as_ref().expect("running").id(), "-CONT");
        }
    }

    /// A PostgreSQL cluster on a free port with the `weir` database and `schema.sql`.
    pub struct Postgres {
        pub port: u16,
        data: PathBuf,
        password: String,
        bin: String,
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false)
    }

    impl Postgres {
        /// `dir` must be reachable by the `postgres` user when the test runs as root; the
        /// cluster then lives in `/var/lib/weir-dev/<name>`.
        pub fn start(dir: &Path) -> Self {
            let bin = super::env("WEIR_PG_BIN_DIR");
            let root = is_root();
            let home = if root {
                let h = PathBuf::from("/var/lib/weir-dev").join(super::unique("faults-pg"));
                std::fs::create_dir_all(&h).unwrap();
                let ok = Command::new("chown")
                    .args(["postgres:postgres", h.to_str().unwrap()])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "chown the test cluster's folder");
                h
            } else {
                dir.join("pg")
            };
            let password = super::unique("pw");
            let pwfile = home.join("pwfile");
            std::fs::write(&pwfile, &password).unwrap();
            if root {
                Command::new("chown")
                    .args(["postgres:postgres", pwfile.to_str().unwrap()])
                    .status()
                    .unwrap();
            }
            let pg = Postgres {
                port: super::free_port(),
                data: home.join("data"),
                password,
                bin,
            };
            let ok = pg
                .command("initdb")
                .args([
                    "-D",
                    pg.data.to_str().unwrap(),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                ])
                .args([
                    "--no-locale",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "initdb");
            std::fs::remove_file(&pwfile).ok();
            pg.ctl(&["start"]);
            pg
        }

        fn command(&self, program: &str) -> Command {
            let path = format!("{}/{program}", self.bin);
            let mut c = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--", &path]);
                c
            } else {
                Command::new(path)
            };
            c.current_dir("/");
            c
        }

        fn ctl(&self, args: &[&str]) {
            let socket = self.data.parent().unwrap();
            let ok = self
                .command("pg_ctl")
                .args(["-D", self.data.to_str().unwrap(), "-w", "-t", "60"])
                .args(["-l", socket.join("postgres.log").to_str().unwrap()])
                .args([
                    "-o",
                    &format!(
                        "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
                        self.port,
                        socket.display()
                    ),
                ])
                .args(args)
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "pg_ctl {args:?}");
        }

        /// The superuser's URL for database `db`.
        pub fn url(&self, db: &str) -> String {
            format!(
                "postgres://postgres:{}@127.0.0.1:{}/{db}",
                self.password, self.port
            )
        }

        /// Shuts down at once (no checkpoint, like a crash), then starts again.
        pub fn crash_and_restart(&self) {
            self.ctl(&["-m", "immediate", "stop"]);
            self.ctl(&["start"]);
        }
    }

    impl Drop for Postgres {
        /// Stops the cluster and removes its files, whether the test passed or not.
        fn drop(&mut self) {
            let _ = self
                .command("pg_ctl")
                .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(self.data.parent().unwrap());
        }
    }
}
