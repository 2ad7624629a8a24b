//! Weir sinks: where records leave a topology (Kafka topic, dead letter, windowed PostgreSQL, websocket).
