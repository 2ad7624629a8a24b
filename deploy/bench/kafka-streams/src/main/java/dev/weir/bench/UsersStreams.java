package dev.weir.bench;

import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonParseException;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.text.Normalizer;
import java.time.Duration;
import java.time.LocalDate;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeParseException;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Pattern;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.processor.api.RecordMetadata;

/**
 * The users topology of topology/users.toml in Kafka Streams, for {@code weir bench topology
 * --contender}: each raw record is read with Jackson's streaming parser into a tree of only
 * the paths the rules read (as Weir reads only those), checked against the same rules
 * (required fields, e-mail, dates, UUID, types, maximum lengths) and either cleaned into the
 * same row (NFC, trim, title and lower case, phone digits, dates, the source coordinates) for
 * the clean topic, or sent as it came to the dead-letter topic with its reasons in a header.
 * exactly_once_v2, commit.interval.ms from WEIR_COMMIT_INTERVAL.
 *
 * <p>It stops 3 s after the last record and prints {@code stopped records=N dead_letters=N
 * records_per_second=R} (first record to last), as {@code weir run --stop-when-idle} logs.
 */
public final class UsersStreams {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final Pattern EMAIL =
      Pattern.compile("^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{2,}$");
  private static final Pattern UUID =
      Pattern.compile(
          "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$");
  private static final String[] REQUIRED = {
    "name.first", "name.last", "email", "location.city", "location.country"
  };
  private static final String[] DATES = {"dob.date", "registered.date"};
  private static final String[][] TYPES = {
    {"name.title", "string"},
    {"location.state", "string"},
    {"location.postcode", "string_or_integer"},
    {"location.street.number", "string_or_integer"},
    {"location.street.name", "string"},
    {"dob.age", "integer"},
    {"phone", "string"},
    {"cell", "string"},
    {"nat", "string"},
    {"picture.thumbnail", "string"},
  };
  private static final Map<String, Integer> MAX_LENGTHS =
      Map.ofEntries(
          Map.entry("name.title", 20),
          Map.entry("name.first", 100),
          Map.entry("name.last", 100),
          Map.entry("email", 255),
          Map.entry("location.street.name", 240),
          Map.entry("location.city", 100),
          Map.entry("location.state", 100),
          Map.entry("location.country", 100),
          Map.entry("location.postcode", 20),
          Map.entry("phone", 30),
          Map.entry("cell", 30));
  private static final String REASONS = "weir.reasons";

  private static final AtomicLong RECORDS = new AtomicLong();
  private static final AtomicLong DEAD = new AtomicLong();
  private static volatile long firstNanos;
  private static volatile long lastNanos;

  private UsersStreams() {}

  public static void main(String[] args) throws InterruptedException {
    String raw = env("WEIR_TOPIC_RAW", "randomuser-topic");
    String clean = env("WEIR_TOPIC_CLEAN", "randomuser-topic-clean");
    String dlq = env("WEIR_TOPIC_DLQ", "randomuser-topic-dlq");
    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, env("WEIR_APPLICATION_ID", "users-streams"));
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, env("WEIR_KAFKA_BOOTSTRAP", "127.0.0.1:9092"));
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, millis(env("WEIR_COMMIT_INTERVAL", "100ms")));
    p.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/weir-bench-ks");
    p.put("consumer.auto.offset.reset", "earliest");

    StreamsBuilder b = new StreamsBuilder();
    b.stream(raw, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
        .processValues(Users::new)
        .to(
            (key, value, context) -> context.headers().lastHeader(REASONS) == null ? clean : dlq,
            Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
    KafkaStreams streams = new KafkaStreams(b.build(), p);
    streams.start();
    while (RECORDS.get() == 0 || System.nanoTime() - lastNanos < 3_000_000_000L) {
      Thread.sleep(100);
    }
    streams.close(Duration.ofSeconds(30));
    long n = RECORDS.get();
    double secs = (lastNanos - firstNanos) / 1e9;
    System.out.printf(
        Locale.ROOT,
        "stopped records=%d dead_letters=%d records_per_second=%.0f%n",
        n,
        DEAD.get(),
        secs > 0 ? n / secs : 0.0);
    System.exit(0);
  }

  /** Validate, then clean or dead-letter: the value for the clean topic, or the raw value
   * with its reasons in a header. */
  private static final class Users implements FixedKeyProcessor<byte[], byte[], byte[]> {
    private FixedKeyProcessorContext<byte[], byte[]> context;

    @Override
    public void init(FixedKeyProcessorContext<byte[], byte[]> context) {
      this.context = context;
    }

    @Override
    public void process(FixedKeyRecord<byte[], byte[]> r) {
      long now = System.nanoTime();
      if (RECORDS.getAndIncrement() == 0) {
        firstNanos = now;
      }
      lastNanos = now;
      List<String> reasons = new ArrayList<>();
      JsonNode user = null;
      try {
        user = readWanted(r.value());
        if (user == null || !user.isObject()) {
          reasons.add("json.not_object");
        }
      } catch (Exception e) {
        reasons.add("json.invalid");
      }
      if (reasons.isEmpty()) {
        validate(user, reasons);
      }
      if (!reasons.isEmpty()) {
        Headers h = r.headers();
        h.add(REASONS, String.join(",", reasons).getBytes(StandardCharsets.UTF_8));
        DEAD.incrementAndGet();
        context.forward(r.withHeaders(h));
        return;
      }
      RecordMetadata m = context.recordMetadata().orElseThrow();
      context.forward(r.withValue(cleanRow(user, m, r.timestamp())));
    }
  }

  /** Every path the checks and the row read. */
  private static final Set<String> WANTED =
      Set.of(
          "name.title", "name.first", "name.last", "email", "gender", "login.uuid",
          "location.street.number", "location.street.name", "location.city", "location.state",
          "location.country", "location.postcode", "dob.date", "dob.age", "registered.date",
          "phone", "cell", "nat", "picture.thumbnail");
  /** The objects those paths go through. */
  private static final Set<String> PARENTS =
      Set.of("name", "login", "location", "location.street", "dob", "registered", "picture");

  /**
   * The record read with Jackson's streaming parser into a tree of only the wanted paths
   * (the rest is parsed, so checked as JSON, and dropped; a later duplicate key wins, as in
   * a full tree); null when it is not an object.
   */
  static JsonNode readWanted(byte[] value) throws IOException {
    try (JsonParser p = JSON.getFactory().createParser(value)) {
      if (p.nextToken() != JsonToken.START_OBJECT) {
        return null;
      }
      ObjectNode root = JSON.createObjectNode();
      readObject(p, "", root);
      if (p.nextToken() != null) {
        throw new JsonParseException(p, "content after the record's object");
      }
      return root;
    }
  }

  private static void readObject(JsonParser p, String prefix, ObjectNode into)
      throws IOException {
    for (JsonToken t = p.nextToken(); t == JsonToken.FIELD_NAME; t = p.nextToken()) {
      String name = p.currentName();
      String path = prefix.isEmpty() ? name : prefix + "." + name;
      JsonToken v = p.nextToken();
      if (v == JsonToken.START_OBJECT && PARENTS.contains(path)) {
        readObject(p, path, into.putObject(name));
      } else if (WANTED.contains(path)) {
        into.set(name, scalar(p, v));
      } else {
        p.skipChildren();
      }
    }
  }

  /** The value at the parser: a scalar as its node, a container through the tree reader. */
  private static JsonNode scalar(JsonParser p, JsonToken v) throws IOException {
    JsonNodeFactory f = JSON.getNodeFactory();
    return switch (v) {
      case VALUE_STRING -> f.textNode(p.getText());
      case VALUE_NUMBER_INT -> f.numberNode(p.getLongValue());
      case VALUE_NUMBER_FLOAT -> f.numberNode(p.getDoubleValue());
      case VALUE_TRUE -> f.booleanNode(true);
      case VALUE_FALSE -> f.booleanNode(false);
      case VALUE_NULL -> f.nullNode();
      default -> JSON.readTree(p);
    };
  }

  static void validate(JsonNode user, List<String> reasons) {
    for (String path : REQUIRED) {
      JsonNode v = at(user, path);
      if (v == null || v.isNull() || (v.isTextual() && v.asText().isBlank())) {
        reasons.add("field.missing:" + path);
      }
    }
    JsonNode email = at(user, "email");
    if (email != null && email.isTextual() && !EMAIL.matcher(email.asText().trim()).matches()) {
      reasons.add("field.email:email");
    }
    for (String path : DATES) {
      JsonNode v = at(user, path);
      if (v != null && !v.isNull() && (!v.isTextual() || date(v.asText()) == null)) {
        reasons.add("field.date:" + path);
      }
    }
    JsonNode uuid = at(user, "login.uuid");
    if (uuid != null && !uuid.isNull() && (!uuid.isTextual() || !UUID.matcher(uuid.asText()).matches())) {
      reasons.add("field.uuid:login.uuid");
    }
    for (String[] t : TYPES) {
      JsonNode v = at(user, t[0]);
      if (v == null || v.isNull()) {
        continue;
      }
      boolean ok =
          switch (t[1]) {
            case "string" -> v.isTextual();
            case "integer" -> v.isIntegralNumber();
            default -> v.isTextual() || v.isIntegralNumber();
          };
      if (!ok) {
        reasons.add("field.type:" + t[0]);
      }
    }
    for (Map.Entry<String, Integer> e : MAX_LENGTHS.entrySet()) {
      JsonNode v = at(user, e.getKey());
      if (v != null && v.isTextual()) {
        String s = nfc(v.asText()).trim();
        if (s.codePointCount(0, s.length()) > e.getValue()) {
          reasons.add("field.too_long:" + e.getKey());
        }
      }
    }
  }

  static byte[] cleanRow(JsonNode u, RecordMetadata m, long timestamp) {
    String first = titled(text(u, "name.first"));
    String last = titled(text(u, "name.last"));
    String number = text(u, "location.street.number");
    String street = text(u, "location.street.name");
    LocalDate dob = date(text(u, "dob.date"));
    JsonNode age = at(u, "dob.age");
    String registered = text(u, "registered.date");
    String nat = trim(text(u, "nat"));
    ByteArrayOutputStream out = new ByteArrayOutputStream(768);
    try (JsonGenerator g = JSON.getFactory().createGenerator(out)) {
      g.writeStartObject();
      g.writeStringField("user_uuid", lower(text(u, "login.uuid")));
      g.writeStringField("title", titled(text(u, "name.title")));
      g.writeStringField("first_name", first == null ? "" : first);
      g.writeStringField("last_name", last == null ? "" : last);
      g.writeStringField(
          "full_name", trim((first == null ? "" : first) + " " + (last == null ? "" : last)));
      g.writeStringField("gender", lower(text(u, "gender")));
      g.writeStringField("email", lower(text(u, "email")));
      g.writeStringField(
          "street_address",
          trim((number == null ? "" : number) + " " + (street == null ? "" : street)));
      g.writeStringField("city", trim(text(u, "location.city")));
      g.writeStringField("state", trim(text(u, "location.state")));
      g.writeStringField("country", trim(text(u, "location.country")));
      g.writeStringField("postcode", trim(text(u, "location.postcode")));
      g.writeStringField("phone", digits(text(u, "phone")));
      g.writeStringField("cell", digits(text(u, "cell")));
      g.writeStringField("dob", dob == null ? null : dob.toString());
      if (age != null && age.isIntegralNumber()) {
        g.writeNumberField("age", age.asLong());
      } else {
        g.writeNullField("age");
      }
      g.writeStringField("registered_at", registered == null ? null : instant(registered));
      g.writeStringField("picture_thumbnail", trim(text(u, "picture.thumbnail")));
      g.writeStringField("nat", nat == null ? null : nat.toUpperCase(Locale.ROOT));
      g.writeObjectFieldStart("source");
      g.writeStringField("topic", m.topic());
      g.writeNumberField("partition", m.partition());
      g.writeNumberField("offset", m.offset());
      g.writeNumberField("timestamp", timestamp);
      g.writeEndObject();
      g.writeEndObject();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    return out.toByteArray();
  }

  /** Each path split at its dots once. */
  private static final Map<String, String[]> KEYS = new java.util.concurrent.ConcurrentHashMap<>();

  static JsonNode at(JsonNode node, String path) {
    JsonNode n = node;
    for (String key : KEYS.computeIfAbsent(path, k -> k.split("\\."))) {
      if (n == null) {
        return null;
      }
      n = n.get(key);
    }
    return n;
  }

  /** The value at a path as text (a number's text too), or null. */
  static String text(JsonNode u, String path) {
    JsonNode v = at(u, path);
    if (v == null || v.isNull() || v.isContainerNode()) {
      return null;
    }
    return nfc(v.asText());
  }

  static String nfc(String s) {
    for (int i = 0; i < s.length(); i++) {
      if (s.charAt(i) >= 0x80) {
        return Normalizer.isNormalized(s, Normalizer.Form.NFC)
            ? s
            : Normalizer.normalize(s, Normalizer.Form.NFC);
      }
    }
    return s;
  }

  /** Trimmed, runs of white space collapsed to one space. */
  static String trim(String s) {
    if (s == null) {
      return null;
    }
    StringBuilder b = new StringBuilder(s.length());
    boolean space = false;
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      if (Character.isWhitespace(c)) {
        space = b.length() > 0;
      } else {
        if (space) {
          b.append(' ');
          space = false;
        }
        b.append(c);
      }
    }
    return b.toString();
  }

  static String lower(String s) {
    return s == null ? null : trim(s).toLowerCase(Locale.ROOT);
  }

  static String titled(String s) {
    if (s == null) {
      return null;
    }
    String t = trim(s);
    StringBuilder b = new StringBuilder(t.length());
    boolean start = true;
    for (int i = 0; i < t.length(); ) {
      int c = t.codePointAt(i);
      b.appendCodePoint(start ? Character.toTitleCase(c) : Character.toLowerCase(c));
      start = !Character.isLetter(c);
      i += Character.charCount(c);
    }
    return b.toString();
  }

  static String digits(String s) {
    if (s == null) {
      return null;
    }
    String t = trim(s);
    StringBuilder b = new StringBuilder(t.length());
    if (t.startsWith("+")) {
      b.append('+');
    }
    for (int i = 0; i < t.length(); i++) {
      char c = t.charAt(i);
      if (c >= '0' && c <= '9') {
        b.append(c);
      }
    }
    return b.toString();
  }

  static LocalDate date(String s) {
    if (s == null) {
      return null;
    }
    String t = s.trim();
    // randomuser's own form, 2015-06-21T08:16:54.599Z, read without the formatter
    if (t.length() == 24 && t.charAt(10) == 'T' && t.charAt(23) == 'Z') {
      try {
        return LocalDate.of(num(t, 0, 4), num(t, 5, 7), num(t, 8, 10));
      } catch (RuntimeException e) {
        // not a date: the formatter says so below
      }
    }
    try {
      return OffsetDateTime.parse(t).withOffsetSameInstant(ZoneOffset.UTC).toLocalDate();
    } catch (DateTimeParseException e) {
      try {
        return LocalDate.parse(t);
      } catch (DateTimeParseException e2) {
        return null;
      }
    }
  }

  static int num(String s, int from, int to) {
    int n = 0;
    for (int i = from; i < to; i++) {
      char c = s.charAt(i);
      if (c < '0' || c > '9') {
        throw new NumberFormatException(s);
      }
      n = n * 10 + (c - '0');
    }
    return n;
  }

  static String instant(String s) {
    String t = s.trim();
    if (t.length() == 24 && t.charAt(10) == 'T' && t.charAt(23) == 'Z' && date(t) != null) {
      return t;
    }
    try {
      return OffsetDateTime.parse(t).toInstant().toString();
    } catch (DateTimeParseException e) {
      return null;
    }
  }

  static String env(String name, String fallback) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? fallback : v;
  }

  /** "100ms", "2s" or a number of milliseconds. */
  static long millis(String d) {
    String t = d.trim();
    if (t.endsWith("ms")) {
      return Long.parseLong(t.substring(0, t.length() - 2));
    }
    if (t.endsWith("s")) {
      return (long) (Double.parseDouble(t.substring(0, t.length() - 1)) * 1000);
    }
    return Long.parseLong(t);
  }
}
