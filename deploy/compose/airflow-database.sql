-- Airflow's metadata lives in a database of its own beside Weir's (run once by the
-- postgres image on an empty data volume, as POSTGRES_USER).
CREATE DATABASE airflow OWNER weir;
