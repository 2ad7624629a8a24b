//! Synthetic randomuser.me users, made locally: the whole system runs with no internet and
//! under heavy load.
//!
//! Users come from many nationalities and scripts (Latin with diacritics, Cyrillic,
//! Persian), with the postcode as a number or a string and phones in local formats, in the
//! exact shape of the API's `results[]` objects. The same seed gives the same records.
//! `dirty` is the fraction of bad records, spread over [`DirtyKind`]s.

use std::fmt::Write as _;

/// A small, fast, deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The kinds of bad record the generator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirtyKind {
    /// A required field left out (`name.first`, `email`, `location.city`, …).
    MissingField,
    /// A required field that is only white space.
    BlankField,
    /// A field of the wrong JSON type (`name.first` a number, `dob.age` a string).
    WrongType,
    /// An email address without an `@` or a domain.
    BadEmail,
    /// A name longer than the table's column.
    OverLongName,
    /// A date that does not parse.
    BadDate,
    /// Cut off in the middle: not JSON.
    MalformedJson,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// Valid JSON that is not an object.
    NotObject,
}

impl DirtyKind {
    pub const ALL: [DirtyKind; 9] = [
        DirtyKind::MissingField,
        DirtyKind::BlankField,
        DirtyKind::WrongType,
        DirtyKind::BadEmail,
        DirtyKind::OverLongName,
        DirtyKind::BadDate,
        DirtyKind::MalformedJson,
        DirtyKind::InvalidUtf8,
        DirtyKind::NotObject,
    ];
}

struct Nationality {
    nat: &'static str,
    country: &'static str,
    female: &'static [&'static str],
    male: &'static [&'static str],
    last: &'static [&'static str],
    /// ASCII forms for email addresses, in the same order as `female` ++ `male` / `last`.
    cities: &'static [(&'static str, &'static str)],
    streets: &'static [&'static str],
    /// Postcode as a JSON number (`true`) or a string.
    numeric_postcode: bool,
    postcode: fn(&mut Rng, &mut String),
    phone: fn(&mut Rng, &mut String),
    timezone: (&'static str, &'static str),
    id_name: &'static str,
}

fn digits(rng: &mut Rng, out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(char::from(b'0' + rng.below(10) as u8));
    }
}

fn persian_digits(rng: &mut Rng, out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(char::from_u32(0x06F0 + rng.below(10) as u32).unwrap_or('0'));
    }
}

const NATIONALITIES: &[Nationality] = &[
    Nationality {
        nat: "US",
        country: "United States",
        female: &["Jennie", "Ashley", "Madison", "Kelly"],
        male: &["Brandon", "Tyler", "Jesse", "Dwayne"],
        last: &["Nichols", "O'Brien", "Walker-Hayes", "Gonzalez"],
        cities: &[
            ("Billings", "Michigan"),
            ("Fresno", "California"),
            ("Austin", "Texas"),
        ],
        streets: &["Valwood Pkwy", "Hamilton Ave", "Pecan Acres Ln"],
        numeric_postcode: false,
        postcode: |r, o| digits(r, o, 5),
        phone: |r, o| {
            o.push('(');
            digits(r, o, 3);
            o.push_str(") ");
            digits(r, o, 3);
            o.push('-');
            digits(r, o, 4);
        },
        timezone: ("-5:00", "Eastern Time (US & Canada), Bogota, Lima"),
        id_name: "SSN",
    },
    Nationality {
        nat: "FR",
        country: "France",
        female: &["Élodie", "Maëlle", "Anaïs", "Zoé"],
        male: &["François", "Gaël", "Jean-Pierre", "Loïc"],
        last: &["Lefèvre", "d'Aubigné", "Girard", "Mercier"],
        cities: &[
            ("Besançon", "Doubs"),
            ("Nîmes", "Gard"),
            ("Saint-Étienne", "Loire"),
        ],
        streets: &[
            "Rue de L'Abbé-Groult",
            "Place du 8 Février 1962",
            "Avenue Debrousse",
        ],
        numeric_postcode: true,
        postcode: |r, o| {
            o.push(char::from(b'1' + r.below(9) as u8));
            digits(r, o, 4);
        },
        phone: |r, o| {
            o.push('0');
            for i in 0..4 {
                digits(r, o, 1 + usize::from(i > 0));
                o.push('-');
            }
            digits(r, o, 2);
        },
        timezone: ("+1:00", "Brussels, Copenhagen, Madrid, Paris"),
        id_name: "INSEE",
    },
    Nationality {
        nat: "DE",
        country: "Germany",
        female: &["Hanna", "Jürgen-Marie", "Lotte", "Bärbel"],
        male: &["Jürgen", "Björn", "Günther", "Maximilian"],
        last: &["Müller", "Schröder", "Weiß", "Groß-Kühn"],
        cities: &[
            ("München", "Bayern"),
            ("Köln", "Nordrhein-Westfalen"),
            ("Lübeck", "Schleswig-Holstein"),
        ],
        streets: &["Schlossstraße", "Am Bahnhof", "Königsallee"],
        numeric_postcode: true,
        postcode: |r, o| {
            o.push(char::from(b'1' + r.below(9) as u8));
            digits(r, o, 4);
        },
        phone: |r, o| {
            o.push('0');
            digits(r, o, 3);
            o.push('-');
            digits(r, o, 7);
        },
        timezone: ("+1:00", "Brussels, Copenhagen, Madrid, Paris"),
        id_name: "SVNR",
    },
    Nationality {
        nat: "UA",
        country: "Ukraine",
        female: &["Зоряна", "Леся", "Ярина", "Оксана"],
        male: &["Богдан", "Тарас", "Ярослав", "Остап"],
        last: &["Бондаренко", "Шевченко", "Коваль", "Мельник-Гринь"],
        cities: &[
            ("Київ", "Київська"),
            ("Львів", "Львівська"),
            ("Одеса", "Одеська"),
        ],
        streets: &["Хрещатик", "вулиця Шевченка", "проспект Свободи"],
        numeric_postcode: true,
        postcode: |r, o| digits(r, o, 5),
        phone: |r, o| {
            o.push_str("(0");
            digits(r, o, 2);
            o.push_str(") ");
            digits(r, o, 3);
            o.push('-');
            digits(r, o, 2);
            o.push('-');
            digits(r, o, 2);
        },
        timezone: ("+2:00", "Kaliningrad, South Africa"),
        id_name: "",
    },
    Nationality {
        nat: "IR",
        country: "Iran",
        female: &["نیایش", "ستایش", "مهسا", "پرنیان"],
        male: &["محمدطاها", "پارسا", "امیرعلی", "آرش"],
        last: &["کامروا", "نکو نظر", "رضایی", "موسوی"],
        cities: &[("تهران", "تهران"), ("اصفهان", "اصفهان"), ("شیراز", "فارس")],
        streets: &["میدان انقلاب", "خیابان ولیعصر", "پارک دانشجو"],
        numeric_postcode: true,
        postcode: |r, o| digits(r, o, 5),
        phone: |r, o| {
            o.push('0');
            persian_digits(r, o, 2);
            o.push('-');
            persian_digits(r, o, 8);
        },
        timezone: ("+3:30", "Tehran"),
        id_name: "",
    },
    Nationality {
        nat: "CA",
        country: "Canada",
        female: &["Chloé", "Emma", "Léa", "Olivia"],
        male: &["Liam", "Noah", "Étienne", "Logan"],
        last: &["Roy", "Tremblay", "Gagnon", "MacDonald"],
        cities: &[
            ("Québec", "Québec"),
            ("Victoria", "British Columbia"),
            ("Halifax", "Nova Scotia"),
        ],
        streets: &["Rue Principale", "King St", "Dufferin St"],
        numeric_postcode: false,
        postcode: |r, o| {
            for i in 0..6 {
                if i == 3 {
                    o.push(' ');
                }
                if i % 2 == 0 {
                    o.push(char::from(b'A' + r.below(26) as u8));
                } else {
                    digits(r, o, 1);
                }
            }
        },
        phone: |r, o| {
            o.push_str("+1 ");
            digits(r, o, 3);
            o.push('-');
            digits(r, o, 3);
            o.push('-');
            digits(r, o, 4);
        },
        timezone: ("-4:00", "Atlantic Time (Canada), Caracas, La Paz"),
        id_name: "SIN",
    },
    Nationality {
        nat: "IN",
        country: "India",
        female: &["Malathy", "Ananya", "Priya", "Diya"],
        male: &["Aarav", "Vihaan", "Arjun", "Sai"],
        last: &["Acharya", "Iyer", "Naidu", "Banerjee"],
        cities: &[
            ("Pune", "Maharashtra"),
            ("Kochi", "Kerala"),
            ("Jaipur", "Rajasthan"),
        ],
        streets: &["MG Road", "Park Street", "Linking Road"],
        numeric_postcode: true,
        postcode: |r, o| {
            o.push(char::from(b'1' + r.below(9) as u8));
            digits(r, o, 5);
        },
        phone: |r, o| {
            o.push('9');
            digits(r, o, 9);
        },
        timezone: ("+5:30", "Bombay, Calcutta, Madras, New Delhi"),
        id_name: "UIDAI",
    },
    Nationality {
        nat: "ES",
        country: "Spain",
        female: &["Lucía", "María José", "Inés", "Begoña"],
        male: &["José", "Ángel", "Íñigo", "Raúl"],
        last: &["Muñoz", "Núñez", "García-Peña", "Ibáñez"],
        cities: &[
            ("Córdoba", "Andalucía"),
            ("Málaga", "Andalucía"),
            ("A Coruña", "Galicia"),
        ],
        streets: &["Calle de Alcalá", "Avenida de Andalucía", "Paseo del Prado"],
        numeric_postcode: true,
        postcode: |r, o| {
            o.push(char::from(b'1' + r.below(5) as u8));
            digits(r, o, 4);
        },
        phone: |r, o| {
            digits(r, o, 3);
            o.push('-');
            digits(r, o, 3);
            o.push('-');
            digits(r, o, 3);
        },
        timezone: ("+1:00", "Brussels, Copenhagen, Madrid, Paris"),
        id_name: "DNI",
    },
    Nationality {
        nat: "TR",
        country: "Turkey",
        female: &["Şule", "Gülşen", "Çiğdem", "Özlem"],
        male: &["Şükrü", "İbrahim", "Çağlar", "Ümit"],
        last: &["Çelik", "Öztürk", "Yıldız", "Şahin"],
        cities: &[
            ("İstanbul", "İstanbul"),
            ("Eskişehir", "Eskişehir"),
            ("Muğla", "Muğla"),
        ],
        streets: &["Atatürk Cd", "Bağdat Cd", "İstiklal Cd"],
        numeric_postcode: true,
        postcode: |r, o| digits(r, o, 5),
        phone: |r, o| {
            o.push('(');
            digits(r, o, 3);
            o.push_str(")-");
            digits(r, o, 3);
            o.push('-');
            digits(r, o, 4);
        },
        timezone: ("+3:00", "Baghdad, Riyadh, Moscow, St. Petersburg"),
        id_name: "",
    },
];

/// Pushes `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `n` random hex digits, sixteen per draw.
fn hex(rng: &mut Rng, out: &mut String, n: usize) {
    const HEX: &[u8] = b"0123456789abcdef";
    let mut left = n;
    while left > 0 {
        let mut bits = rng.next_u64();
        let mut chunk = [0u8; 16];
        let take = left.min(16);
        for c in &mut chunk[..take] {
            *c = HEX[(bits & 0xf) as usize];
            bits >>= 4;
        }
        out.push_str(std::str::from_utf8(&chunk[..take]).expect("hex digits"));
        left -= take;
    }
}

fn uuid(rng: &mut Rng, s: &mut String) {
    hex(rng, s, 8);
    s.push('-');
    hex(rng, s, 4);
    s.push_str("-4");
    hex(rng, s, 3);
    s.push('-');
    s.push(char::from(b"89ab"[rng.below(4) as usize]));
    hex(rng, s, 3);
    s.push('-');
    hex(rng, s, 12);
}

/// A date between the years `from` and `to`, as the API writes it
/// (`1983-04-07T10:22:31.120Z`, always 24 bytes), and the age at 2026.
fn date(rng: &mut Rng, from: u64, to: u64) -> (Date, u64) {
    let year = from + rng.below(to - from + 1);
    let month = 1 + rng.below(12);
    let day = 1 + rng.below(28);
    let mut d = *b"0000-00-00T00:00:00.000Z";
    for (at, n, width) in [
        (0, year, 4),
        (5, month, 2),
        (8, day, 2),
        (11, rng.below(24), 2),
        (14, rng.below(60), 2),
        (17, rng.below(60), 2),
        (20, rng.below(1000), 3),
    ] {
        let mut n = n;
        for i in (at..at + width).rev() {
            d[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    (Date(d), 2026 - year)
}

/// A date as [`date`] writes it, kept on the stack.
#[derive(Clone, Copy)]
struct Date([u8; 24]);

impl Date {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII digits and separators")
    }
}

/// `n` in decimal with at least `width` digits (zeros in front); by hand, as `write!` was a
/// tenth of the generator's time.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    i = i.min(digits.len() - width);
    out.extend(digits[i..].iter().map(|&b| char::from(b)));
}

/// `n` in decimal.
fn push_u64(out: &mut String, n: u64) {
    push_padded(out, n, 1);
}

/// One generated record: its key (`login.uuid`), value bytes, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub key: String,
    pub value: Vec<u8>,
    pub dirty: Option<DirtyKind>,
}

/// The generator: deterministic for a seed.
pub struct Synthetic {
    rng: Rng,
    dirty: f64,
    counter: u64,
    /// The postcode, before it is written as a number or a string.
    postcode: String,
}

impl Synthetic {
    /// `dirty` is the fraction (0 to 1) of bad records.
    pub fn new(seed: u64, dirty: f64) -> Self {
        Self {
            rng: Rng::new(seed),
            dirty: dirty.clamp(0.0, 1.0),
            counter: 0,
            postcode: String::with_capacity(16),
        }
    }

    /// The next record.
    pub fn next_record(&mut self) -> Generated {
        let mut key = String::new();
        let mut value = Vec::new();
        let dirty = self.next_into(&mut key, &mut value);
        Generated { key, value, dirty }
    }

    /// The next record, written into reused buffers (the fast path for load).
    pub fn next_into(&mut self, key: &mut String, value: &mut Vec<u8>) -> Option<DirtyKind> {
        let dirty = if self.dirty > 0.0 && self.rng.chance(self.dirty) {
            Some(*self.rng.pick(&DirtyKind::ALL))
        } else {
            None
        };
        self.counter += 1;
        key.clear();
        uuid(&mut self.rng, key);
        value.clear();
        self.user(key, dirty, value);
        dirty
    }

    /// Writes one user into `value` (cleared). No allocation once `value` has grown to a
    /// record's size: at full speed every byte of the generator counts.
    fn user(&mut self, uuid: &str, dirty: Option<DirtyKind>, value: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let n = &NATIONALITIES[rng.below(NATIONALITIES.len() as u64) as usize];
        let female = rng.chance(0.5);
        let first = *rng.pick(if female { n.female } else { n.male });
        let last = *rng.pick(n.last);
        let (city, state) = *rng.pick(n.cities);
        let street = *rng.pick(n.streets);
        let number = 1 + rng.below(9999);
        let (dob, age) = date(rng, 1950, 2005);
        let (registered, reg_age) = date(rng, 2002, 2024);
        let id = self.counter;
        // which field a dirty record spoils
        let spoil = rng.below(4);

        // the record is written as text straight into the caller's buffer
        value.clear();
        let mut text = String::from_utf8(std::mem::take(value)).unwrap_or_default();
        let out = &mut text;
        let title = match (female, n.nat) {
            (true, "FR") => "Madame",
            (false, "FR") => "Monsieur",
            (true, _) => ["Ms", "Miss", "Mrs"][(id % 3) as usize],
            (false, _) => "Mr",
        };
        out.push_str("{\"gender\":");
        push_json_str(out, if female { "female" } else { "male" });
        out.push_str(",\"name\":{\"title\":");
        push_json_str(out, title);
        // name.first, possibly spoiled
        match (dirty, spoil) {
            (Some(DirtyKind::MissingField), 0) => {}
            (Some(DirtyKind::BlankField), 0) => out.push_str(",\"first\":\"   \""),
            (Some(DirtyKind::WrongType), 0) => out.push_str(",\"first\":42"),
            (Some(DirtyKind::OverLongName), _) => {
                out.push_str(",\"first\":");
                push_json_str(out, &first.repeat(120 / first.chars().count().max(1) + 1));
            }
            _ => {
                out.push_str(",\"first\":");
                push_json_str(out, first);
            }
        }
        out.push_str(",\"last\":");
        push_json_str(out, last);
        out.push_str("},\"location\":{\"street\":{\"number\":");
        push_u64(out, number);
        out.push_str(",\"name\":");
        push_json_str(out, street);
        out.push('}');
        match (dirty, spoil) {
            (Some(DirtyKind::MissingField), 1) => {}
            (Some(DirtyKind::BlankField), 1) => out.push_str(",\"city\":\"\""),
            _ => {
                out.push_str(",\"city\":");
                push_json_str(out, city);
            }
        }
        out.push_str(",\"state\":");
        push_json_str(out, state);
        match (dirty, spoil) {
            (Some(DirtyKind::MissingField), 3) => {}
            (Some(DirtyKind::BlankField), 2 | 3) => out.push_str(",\"country\":\" \\t \""),
            _ => {
                out.push_str(",\"country\":");
                push_json_str(out, n.country);
            }
        }
        out.push_str(",\"postcode\":");
        let pc = &mut self.postcode;
        pc.clear();
        (n.postcode)(rng, pc);
        if n.numeric_postcode {
            out.push_str(pc.trim_start_matches('0'));
        } else {
            push_json_str(out, pc);
        }
        // coordinates as the API writes them ("-69.8246"), without float formatting
        let (lat, lon) = (
            rng.below(1_800_000) as i64 - 900_000,
            rng.below(3_600_000) as i64 - 1_800_000,
        );
        out.push_str(",\"coordinates\":{\"latitude\":\"");
        push_degrees(out, lat);
        out.push_str("\",\"longitude\":\"");
        push_degrees(out, lon);
        out.push_str("\"},\"timezone\":{\"offset\":");
        push_json_str(out, n.timezone.0);
        out.push_str(",\"description\":");
        push_json_str(out, n.timezone.1);
        out.push_str("}}");
        // email
        match (dirty, spoil) {
            (Some(DirtyKind::MissingField), 2) => {}
            (Some(DirtyKind::BadEmail), _) => {
                out.push_str(",\"email\":\"user");
                push_u64(out, id);
                out.push_str(".example.com\"");
            }
            (Some(DirtyKind::WrongType), 2) => out.push_str(",\"email\":[\"a@b.co\"]"),
            _ => {
                out.push_str(",\"email\":\"user");
                push_u64(out, id);
                out.push('.');
                out.extend(n.nat.chars().map(|c| c.to_ascii_lowercase()));
                out.push_str("@example.com\"");
            }
        }
        out.push_str(",\"login\":{\"uuid\":");
        push_json_str(out, uuid);
        out.push_str(",\"username\":\"user");
        push_u64(out, id);
        out.push_str("\",\"password\":\"secret\",\"salt\":\"");
        hex(rng, out, 8);
        out.push_str("\",\"md5\":\"");
        hex(rng, out, 32);
        out.push_str("\",\"sha1\":\"");
        hex(rng, out, 40);
        out.push_str("\",\"sha256\":\"");
        hex(rng, out, 64);
        out.push_str("\"}");
        out.push_str(",\"dob\":{\"date\":\"");
        match (dirty, spoil) {
            (Some(DirtyKind::BadDate), _) => {
                out.push_str("31/02/");
                push_u64(out, 2026 - age);
                out.push_str("\",\"age\":");
                push_u64(out, age);
            }
            (Some(DirtyKind::WrongType), 1 | 3) => {
                out.push_str(dob.as_str());
                out.push_str("\",\"age\":\"");
                push_u64(out, age);
                out.push_str(" years\"");
            }
            _ => {
                out.push_str(dob.as_str());
                out.push_str("\",\"age\":");
                push_u64(out, age);
            }
        }
        out.push_str("},\"registered\":{\"date\":\"");
        out.push_str(registered.as_str());
        out.push_str("\",\"age\":");
        push_u64(out, reg_age);
        out.push_str("},\"phone\":\"");
        (n.phone)(rng, out);
        out.push_str("\",\"cell\":\"");
        (n.phone)(rng, out);
        out.push_str("\",\"id\":{\"name\":");
        push_json_str(out, n.id_name);
        if n.id_name.is_empty() {
            out.push_str(",\"value\":null}");
        } else {
            out.push_str(",\"value\":\"");
            digits(rng, out, 9);
            out.push_str("\"}");
        }
        let g = if female { "women/" } else { "men/" };
        let p = rng.below(100);
        out.push_str(",\"picture\":{");
        for (size, path) in [
            ("\"large\"", ""),
            (",\"medium\"", "med/"),
            (",\"thumbnail\"", "thumb/"),
        ] {
            out.push_str(size);
            out.push_str(":\"https://randomuser.me/api/portraits/");
            out.push_str(path);
            out.push_str(g);
            push_u64(out, p);
            out.push_str(".jpg\"");
        }
        out.push_str("},\"nat\":");
        push_json_str(out, n.nat);
        out.push('}');

        match dirty {
            Some(DirtyKind::MalformedJson) => {
                let mut cut = out.len() / 2;
                while !out.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.truncate(cut);
            }
            Some(DirtyKind::NotObject) => {
                out.clear();
                out.push_str(match spoil {
                    0 => "[]",
                    1 => "null",
                    2 => "\"a string\"",
                    _ => "[{\"name\":{\"first\":\"A\"}}]",
                });
            }
            _ => {}
        }
        *value = text.into_bytes();
        if dirty == Some(DirtyKind::InvalidUtf8) {
            // a lone continuation byte and a truncated sequence inside the name
            let at = value.iter().position(|&b| b == b':').unwrap_or(0) + 1;
            value.splice(at..at, [0xC3, 0x28, 0x80]);
        }
    }
}

/// Ten-thousandths of a degree as the API writes them: `-69.8246`.
fn push_degrees(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    let n = n.unsigned_abs();
    push_u64(out, n / 10_000);
    out.push('.');
    push_padded(out, n % 10_000, 4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_as_the_api_writes_them() {
        let mut out = String::new();
        push_padded(&mut out, 7, 2);
        push_padded(&mut out, 123, 2);
        push_padded(&mut out, 0, 3);
        push_padded(&mut out, 2004, 4);
        assert_eq!(out, "071230002004");
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let (d, age) = date(&mut rng, 1950, 2005);
            let d = d.as_str();
            assert!(
                chrono::DateTime::parse_from_rfc3339(d).is_ok() && d.len() == 24,
                "{d}"
            );
            assert!((21..=76).contains(&age));
        }
    }
    use std::collections::HashMap;

    #[test]
    fn the_same_seed_gives_the_same_records() {
        let mut a = Synthetic::new(42, 0.2);
        let mut b = Synthetic::new(42, 0.2);
        let mut c = Synthetic::new(43, 0.2);
        let (ra, rb, rc): (Vec<_>, Vec<_>, Vec<_>) = (
            (0..500).map(|_| a.next_record()).collect(),
            (0..500).map(|_| b.next_record()).collect(),
            (0..500).map(|_| c.next_record()).collect(),
        );
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
    }

    #[test]
    fn clean_records_are_randomuser_shaped_json() {
        let mut g = Synthetic::new(7, 0.0);
        let mut nats = HashMap::new();
        let mut numeric_postcodes = 0;
        for _ in 0..2000 {
            let r = g.next_record();
            assert_eq!(r.dirty, None);
            let v: serde_json::Value = serde_json::from_slice(&r.value).expect("valid JSON");
            assert_eq!(v["login"]["uuid"], r.key.as_str());
            for path in [
                "/name/first",
                "/name/last",
                "/email",
                "/location/city",
                "/location/country",
                "/dob/date",
                "/phone",
            ] {
                assert!(
                    v.pointer(path).is_some_and(|x| x.is_string()),
                    "{path} in {v}"
                );
            }
            numeric_postcodes += usize::from(v["location"]["postcode"].is_number());
            *nats
                .entry(v["nat"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        assert_eq!(
            nats.len(),
            NATIONALITIES.len(),
            "every nationality appears: {nats:?}"
        );
        assert!(
            numeric_postcodes > 200 && numeric_postcodes < 1900,
            "{numeric_postcodes}"
        );
    }

    #[test]
    fn the_dirty_fraction_covers_every_kind() {
        let mut g = Synthetic::new(1, 0.1);
        let mut kinds: HashMap<DirtyKind, usize> = HashMap::new();
        let total = 50_000;
        for _ in 0..total {
            if let Some(k) = g.next_record().dirty {
                *kinds.entry(k).or_default() += 1;
            }
        }
        let dirty: usize = kinds.values().sum();
        assert!(
            (4_500..5_500).contains(&dirty),
            "about 10% dirty, got {dirty}"
        );
        assert_eq!(kinds.len(), DirtyKind::ALL.len(), "{kinds:?}");
        let mut g = Synthetic::new(1, 0.1);
        for _ in 0..5_000 {
            let r = g.next_record();
            match r.dirty {
                Some(DirtyKind::InvalidUtf8) => assert!(std::str::from_utf8(&r.value).is_err()),
                Some(DirtyKind::MalformedJson) => {
                    assert!(serde_json::from_slice::<serde_json::Value>(&r.value).is_err())
                }
                Some(DirtyKind::NotObject) => {
                    assert!(!serde_json::from_slice::<serde_json::Value>(&r.value)
                        .unwrap()
                        .is_object())
                }
                _ => {
                    let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                    assert!(v.is_object());
                }
            }
        }
    }
}
