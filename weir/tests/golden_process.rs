//! Golden regression test of the processing path: a seeded mix of 400,000 raw records —
//! randomuser-shaped users with every dirty kind and the text and JSON corners that a
//! faster parser could get wrong (escapes, surrogate pairs, duplicate keys, non-NFC names,
//! final sigma, odd white space, huge and negative numbers, deep nesting) — goes through
//! `weir process users.toml`, and the SHA-256 of its output must be the one recorded here.
//!
//! The digest was made with the build of 2026-11-29 before the processing path was
//! rewritten: any change to what `weir process` prints (the fate, the reasons, the messages,
//! the clean record byte for byte) fails this test. The input's own digest is checked too, so
//! a change to this generator is not mistaken for a change of the output.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

const RECORDS: usize = 400_000;
const INPUT_SHA256: &str = "f15794542a52fe360543e822371f9e9409212610d748495016ba036b4e693225";
const OUTPUT_SHA256: &str = "26a8b01faea90923ed92f941b56e334eefa26a618737897dcb75c41245bacf70";

/// xorshift64*: the same sequence on every machine.
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
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// First names, as JSON string bodies (escapes included): scripts, cases, non-NFC forms.
const FIRST: &[&str] = &[
    "Ana",
    "zoryana",
    "  ÉLODIE ",
    "پارسا",
    "o'neil",
    "Mary-Jane",
    "Jürgen",
    "Леся",
    "ΟΔΥΣΣΕΥΣ",
    "Jose\u{301}",
    "e\\u0301milie",
    "\\u00c9lise",
    "İlkay",
    "straße",
    "ǆemal",
    "ﬁona",
    "Zoë\\t\\tAnn",
    "D’artagnan",
    "mary\u{a0}ann",
    "\\ud83d\\ude00 Smiley",
    "Ren\\u00e9e\\n",
    "tab\\tbed",
    "\\\"Quoted\\\"",
    "back\\\\slash",
    "slash\\/ed",
    "Nul\\u0000Name",
    "ǅivko",
    "ŉiko",
    "ΣΊΣΥΦΟΣ",
    "ǰames",
    "x",
];

const LAST: &[&str] = &[
    "li",
    "Kovalenko",
    "d'arc",
    "نکو نظر",
    "SMITH-JONES",
    "Müller",
    "Українка",
    "o\u{2019}brien",
    "van der berg",
    "\\u0130nce",
    "MACDONALD\u{2003}Jr",
    "ΚΑΛΟΣ",
    "Nguyễn",
    "Ng\\u01b0\\u0303",
    "a-b-c",
    "o'-x",
];

const CITIES: &[&str] = &[
    "Kyiv",
    "  São   Paulo ",
    "Zürich",
    "تهران",
    "New\\tYork",
    "Ålesund",
    "Montréal",
    "Mu\\u0308nchen",
];

const EMAIL_LOCALS: &[&str] = &["user", "Ana.Li", "x_y%z", "UPPER", "a+b", "zoe"];
const EMAIL_DOMAINS: &[&str] = &[
    "example.com",
    "Example.COM",
    "mail.example.co.uk",
    "ex-ample.org",
];
const BAD_EMAILS: &[&str] = &[
    "not-an-email",
    "a@b",
    "@example.com",
    "a b@example.com",
    "ä@example.com",
    "a@example.c",
    "",
    "   ",
];
const DATES: &[&str] = &[
    "1993-07-20T09:44:18.674Z",
    "2015-06-21T11:04:38.419+02:00",
    "1950-01-01T00:00:00Z",
    "2000-02-29",
    " 1988-12-31T23:59:59.999-05:00 ",
    "1969-12-31T23:59:59.999Z",
];
const BAD_DATES: &[&str] = &["31/02/1990", "yesterday", "1990-13-01", "2001-02-29", ""];
const PHONES: &[&str] = &[
    "(097) 555-12-34",
    "+380 97 555 1234",
    "015242 95285",
    "۰۹۱۲-۳۴۵-۶۷۸۹",
    "٠١٢٣ ٤٥٦",
    " +44 (0)20 7946 0958",
    "call me",
    "１２３",
    "+",
    "12+34",
];

fn uuid(rng: &mut Rng, upper: bool) -> String {
    let hex = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| {
                let d = rng.below(16) as u8;
                let c = if d < 10 { b'0' + d } else { b'a' + d - 10 };
                if upper {
                    c.to_ascii_uppercase() as char
                } else {
                    c as char
                }
            })
            .collect()
    };
    format!(
        "{}-{}-4{}-a{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 3),
        hex(rng, 3),
        hex(rng, 12)
    )
}

/// A JSON value for a string body or one of its odd replacements.
fn text(rng: &mut Rng, body: &str) -> String {
    match rng.below(1000) {
        0 => "null".into(),
        1 => "42".into(),
        2 => "[\"x\"]".into(),
        3 => "{\"a\":1}".into(),
        4 => "true".into(),
        _ => format!("\"{body}\""),
    }
}

/// One of `items` as a JSON value (see [`text`]).
fn pick_text(rng: &mut Rng, items: &[&str]) -> String {
    let body = rng.pick(items);
    text(rng, body)
}

/// One randomuser-shaped user, sometimes with a field missing, doubled or of an odd type.
fn user(rng: &mut Rng, i: usize) -> String {
    let mut f: Vec<String> = Vec::new();
    let mut push = |key: &str, value: String, rng: &mut Rng| {
        if rng.below(500) == 0 {
            return; // missing
        }
        if rng.chance(1) {
            f.push(format!("\"{key}\":\"first of two\"")); // duplicate key: the last wins
        }
        f.push(format!("\"{key}\":{value}"));
    };
    let gender = rng.pick(&["female", "male", "Female", " MALE "]);
    push("gender", text(rng, gender), rng);
    let title = rng.pick(&["Ms", "mr", "MADAME", "Monsieur", "  dr  "]);
    let first = if rng.below(100) == 0 {
        "  "
    } else {
        rng.pick(FIRST)
    };
    let last = rng.pick(LAST);
    let name = format!(
        "{{\"title\":{},\"first\":{},\"last\":{}}}",
        text(rng, title),
        text(rng, first),
        text(rng, last)
    );
    push("name", name, rng);
    let number = match rng.below(100) {
        0 => format!("\"{}\"", rng.below(10_000)),
        1 => "\"12a\"".into(),
        2 => "-7".into(),
        3 => "1.5".into(),
        _ => rng.below(10_000).to_string(),
    };
    let postcode = match rng.below(150) {
        0 => "\"PC 12\"".into(),
        1 => "123456789012345678901234567890".into(),
        2 => "-0".into(),
        3 => "1e3".into(),
        4 => "\"  A1B   2C3 \"".into(),
        5 => "18446744073709551615".into(),
        6 => "\"ąčę\"".into(),
        7 => "1.50".into(),
        _ => format!("{}", 10_000 + rng.below(90_000)),
    };
    let city = rng.pick(CITIES);
    let location = format!(
        "{{\"street\":{{\"number\":{number},\"name\":{}}},\"city\":{},\"state\":{},\"country\":{},\"postcode\":{postcode},\
\"coordinates\":{{\"latitude\":\"-69.8246\",\"longitude\":\"134.8719\"}},\"timezone\":{{\"offset\":\"+9:30\",\"description\":\"Adelaide\"}}}}",
        pick_text(rng, &["Main Street", "  Rue   de la Paix ", "Шевченка", "\\u0053treet"]),
        text(rng, city),
        pick_text(rng, &["Kyivska", "Île-de-France", ""]),
        pick_text(rng, &["Ukraine", "France", "Iran", "  Brasil "]),
    );
    push("location", location, rng);
    let email = if rng.chance(3) {
        rng.pick(BAD_EMAILS).to_owned()
    } else {
        format!("{}.{i}@{}", rng.pick(EMAIL_LOCALS), rng.pick(EMAIL_DOMAINS))
    };
    push("email", text(rng, &email), rng);
    let upper = rng.chance(10);
    let id = uuid(rng, upper);
    let login_uuid = match rng.below(100) {
        0 => "not-a-uuid".to_owned(),
        1 => format!(" {id} "),
        _ => id,
    };
    push(
        "login",
        format!(
            "{{\"uuid\":{},\"username\":\"user{i}\",\"password\":\"pw\",\"salt\":\"s\",\"md5\":\"m\",\"sha1\":\"h\",\"sha256\":\"h\"}}",
            text(rng, &login_uuid)
        ),
        rng,
    );
    let dob = if rng.chance(2) {
        rng.pick(BAD_DATES)
    } else {
        rng.pick(DATES)
    };
    let age = match rng.below(150) {
        0 => "\"31\"".into(),
        1 => "31.0".into(),
        2 => "null".into(),
        3 => "\" 7 \"".into(),
        4 => "-1".into(),
        _ => (18 + rng.below(70)).to_string(),
    };
    push(
        "dob",
        format!("{{\"date\":{},\"age\":{age}}}", text(rng, dob)),
        rng,
    );
    let registered = rng.pick(DATES);
    push(
        "registered",
        format!("{{\"date\":{},\"age\":9}}", text(rng, registered)),
        rng,
    );
    push("phone", pick_text(rng, PHONES), rng);
    push("cell", pick_text(rng, PHONES), rng);
    push(
        "id",
        "{\"name\":\"TFN\",\"value\":\"123 456 789\"}".to_owned(),
        rng,
    );
    push(
        "picture",
        format!(
            "{{\"large\":\"https://randomuser.me/api/portraits/women/{i}.jpg\",\"medium\":\"m\",\"thumbnail\":{}}}",
            text(rng, "https://randomuser.me/api/portraits/thumb/women/1.jpg")
        ),
        rng,
    );
    push("nat", pick_text(rng, &["UA", "fr", "Ir", "BR"]), rng);
    if rng.chance(3) {
        f.push("\"extra\":{\"nested\":[1,2,{\"deep\":[null,true,false,-1.5e-3]}]}".into());
    }
    let sep = if rng.chance(5) { " , " } else { "," };
    let body = f.join(sep);
    if rng.chance(5) {
        format!(" {{ {body} }} ")
    } else {
        format!("{{{body}}}")
    }
}

/// Record `i` of the mix: a user, or one of the undecodable and non-object kinds.
fn record(rng: &mut Rng, i: usize) -> Vec<u8> {
    match rng.below(100) {
        0 => {
            let u = user(rng, i);
            let cut = rng.below(u.len() as u64) as usize;
            u.as_bytes()[..cut].to_vec()
        }
        1 => {
            let mut b = user(rng, i).into_bytes();
            let at = rng.below(b.len() as u64) as usize;
            b.insert(at, [0xff, 0xc3, 0x80, 0xed][rng.below(4) as usize]);
            b
        }
        2 => rng
            .pick(&[
                "[1,2,3]",
                "\"a string\"",
                "42",
                "null",
                "true",
                "",
                "   ",
                "{}",
                "{\"name\":{}}",
            ])
            .as_bytes()
            .to_vec(),
        3 => format!("{} trailing", user(rng, i)).into_bytes(),
        4 => {
            let depth = 100 + rng.below(60) as usize;
            format!("{{\"name\":{}{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        5 => format!("\u{feff}{}", user(rng, i)).into_bytes(),
        6 => user(rng, i)
            .replacen("\"email\":", "\"email\":\"\\ud800\",\"e2\":", 1)
            .into_bytes(),
        7 => user(rng, i)
            .replacen(
                "\"city\":",
                &format!("\"city\":\"{}\",\"c2\":", "x".repeat(101)),
                1,
            )
            .into_bytes(),
        _ => user(rng, i).into_bytes(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn weir_process_prints_what_it_printed_before_the_rewrite() {
    let mut rng = Rng(0x5eed_0000_2026_1129);
    let mut input = Vec::with_capacity(RECORDS * 1100);
    for i in 0..RECORDS {
        let mut r = record(&mut rng, i);
        // one record per line: a newline inside a value would split it
        r.retain(|b| *b != b'\n');
        input.extend_from_slice(&r);
        input.push(b'\n');
    }
    let input_sha = hex(&Sha256::digest(&input));
    // the same mix as a file, for benchmarks: WEIR_GOLDEN_INPUT=raw.jsonl
    if let Ok(path) = std::env::var("WEIR_GOLDEN_INPUT") {
        std::fs::write(&path, &input).expect("write WEIR_GOLDEN_INPUT");
    }

    let users = common::weir::users_toml();
    let mut child = Command::new(common::weir_bin())
        .args(["process", users.to_str().unwrap()])
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start weir process");
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        stdin.write_all(&input).expect("feed weir process");
    });
    let out = child.wait_with_output().expect("weir process output");
    feeder.join().unwrap();
    assert!(out.status.success(), "weir process failed: {}", out.status);
    let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
    assert_eq!(lines, RECORDS, "one fate per input line");
    let text = String::from_utf8_lossy(&out.stdout);
    let clean = text
        .lines()
        .filter(|l| l.contains("\"output\":\"clean_topic\""))
        .count();
    let dead = text
        .lines()
        .filter(|l| l.contains("\"output\":\"dead_letter\""))
        .count();
    assert_eq!(clean + dead, RECORDS, "every record has one of two fates");
    assert!(
        clean > RECORDS / 4 && dead > RECORDS / 10,
        "a mix of fates: {clean} clean, {dead} dead letters"
    );
    let output_sha = hex(&Sha256::digest(&out.stdout));
    assert_eq!(
        (input_sha.as_str(), output_sha.as_str()),
        (INPUT_SHA256, OUTPUT_SHA256),
        "(input, output) SHA-256 of weir process: {clean} clean, {dead} dead letters"
    );
}

/// The engine sends records through the pipeline a few at a time, node by node: each record
/// gets exactly the outputs it gets alone, and the counters the same counts.
#[test]
fn a_batch_through_the_nodes_gives_each_record_what_one_at_a_time_gives() {
    use weir_topology::metrics::Metrics;
    use weir_topology::pipeline::Pipeline;
    use weir_topology::Origin;

    let users = common::weir::users_toml();
    let t = weir_topology::load_file(&users, &weir::registry::registry()).expect("users.toml");
    let sub = weir_topology::graph::sub_topologies(&t)
        .into_iter()
        .find(|s| s.nodes.iter().any(|n| n == "raw"))
        .expect("the processing sub-topology");
    let (m1, m2) = (Metrics::new(), Metrics::new());
    let mut alone = Pipeline::build(&t, &sub, Some(&m1)).expect("pipeline");
    let mut together = Pipeline::build(&t, &sub, Some(&m2)).expect("pipeline");
    let topic = alone.topics()[0].clone();
    let mut rng = Rng(0x5eed_0000_2026_1129);
    let records: Vec<Vec<u8>> = (0..40_000).map(|i| record(&mut rng, i)).collect();
    let origin = |i: usize| Origin {
        topic: topic.clone(),
        partition: (i % 4) as i32,
        offset: i as i64,
        timestamp: Some(1_764_000_000_000 + i as i64),
        key: Some(format!("k{i}").into_bytes()),
        value: Some(records[i].clone()),
        headers: vec![("h".into(), Some(b"v".to_vec()))],
        ..Origin::default()
    };
    let mut want = Vec::new();
    for i in 0..records.len() {
        let mut out = Vec::new();
        alone.process_into(origin(i), &mut out);
        want.push(out);
    }
    // batches of every size from 1 to 40, and the engine's
    let mut got = Vec::new();
    let (mut i, mut size) = (0, 1);
    while i < records.len() {
        let end = (i + size).min(records.len());
        together.process_batch_into((i..end).map(origin), &mut got);
        i = end;
        size = if size == 40 {
            weir_topology::pipeline::NODE_BATCH
        } else {
            size + 1
        };
    }
    // when a record failed is the clock's: not compared
    for r in got.iter_mut().chain(want.iter_mut()).flatten() {
        for (k, v) in &mut r.headers {
            if k == "weir.errors.failed.at" {
                *v = None;
            }
        }
    }
    assert_eq!(got.len(), want.len(), "one Vec of outputs per input");
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "the outputs of record {k}");
    }
    let (clean, dead) = want.iter().flatten().fold((0, 0), |(c, d), r| {
        if r.headers.iter().any(|(k, _)| k.starts_with("weir.errors")) {
            (c, d + 1)
        } else {
            (c + 1, d)
        }
    });
    assert!(
        clean > 10_000 && dead > 4_000,
        "a mix: {clean} clean, {dead} dead letters"
    );
    assert_eq!(m2.render(), m1.render(), "the same counts");
}
