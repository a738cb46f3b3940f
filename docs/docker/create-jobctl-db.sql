-- The application's own database next to Temporal's, for temporal-dev.yml.
CREATE USER jobctl WITH PASSWORD 'jobctl';
CREATE DATABASE jobctl OWNER jobctl;
