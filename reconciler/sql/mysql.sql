-- Tables of SPEC section 2, as the Postfix lookup queries of example-repo read them.
-- The one source of truth for the schema: `reconciler init-db` runs this file (idempotent) on every
-- start, and `schemas/mysql.sql`, the published copy SPEC section 2 names, is generated from it by
-- `python -m reconciler.schemagen` (tests/test_schemas.py fails when it is stale). Collation is case-insensitive because Postfix folds lookup keys to lower case
-- and mail addresses are compared case-insensitively in practice; the UNIQUE keys follow suit.

CREATE TABLE IF NOT EXISTS virtual_domains (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  name VARCHAR(253) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_virtual_domains_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS virtual_users (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  domain_id INT UNSIGNED NOT NULL,
  email VARCHAR(254) NOT NULL,
  password VARCHAR(255) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_virtual_users_email (email),
  KEY ix_virtual_users_domain (domain_id),
  CONSTRAINT fk_virtual_users_domain FOREIGN KEY (domain_id) REFERENCES virtual_domains (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS virtual_aliases (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  domain_id INT UNSIGNED NOT NULL,
  source VARCHAR(254) NOT NULL,
  destination VARCHAR(254) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_virtual_aliases_pair (source, destination),
  KEY ix_virtual_aliases_domain (domain_id),
  CONSTRAINT fk_virtual_aliases_domain FOREIGN KEY (domain_id) REFERENCES virtual_domains (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The agent's own bookkeeping: one row per key (applied_revision, schema_version, ...).
CREATE TABLE IF NOT EXISTS reconciler_state (
  name VARCHAR(64) NOT NULL,
  value TEXT NOT NULL,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per mail host of a fleet (SPEC section 6), written by that host's agent: its wave (from its
-- hosts/<name>.yaml), the revision its files are at (written in the apply's own transaction, with
-- the apply id that crash recovery looks for), its state, when it was last seen (UTC, the database
-- node's clock), its last error, and the revision it failed, if any. Read by GET /fleet,
-- `reconciler status --fleet` and the agents' wave checks. Each host writes only its own row, so
-- hosts applying at the same time never conflict on it.
CREATE TABLE IF NOT EXISTS reconciler_hosts (
  name VARCHAR(63) NOT NULL,
  wave INT NOT NULL DEFAULT 0,
  applied_revision VARCHAR(64) NOT NULL DEFAULT '',
  head_revision VARCHAR(64) NOT NULL DEFAULT '',
  state VARCHAR(32) NOT NULL DEFAULT '',
  last_seen DATETIME(6) NOT NULL,
  last_error TEXT NULL,
  failed_revision VARCHAR(64) NOT NULL DEFAULT '',
  waiting_for TEXT NULL,
  last_apply_id VARCHAR(64) NOT NULL DEFAULT '',
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Per-domain digests of the rows, kept current by triggers, so that `diff` and `apply` learn which
-- domains changed by reading one row per domain instead of hashing every row. A digest is
-- (count, XOR of the first 64 bits of MD5(email NUL password)) for users and the same over
-- (source NUL destination) for aliases: the exact values the full scan computes. Cascaded deletes
-- fire no trigger, hence the trigger on virtual_domains. Creating triggers needs the TRIGGER
-- privilege; without it the agent falls back to the full scan (see reconciler/observed.py).
-- A session that sets @reconciler_digest_off (the agent's bulk applies) recomputes the table
-- itself in the same transaction instead of paying one upsert per row. `init-db` drops and
-- recreates the triggers, then rebuilds the table.
CREATE TABLE IF NOT EXISTS reconciler_digest (
  domain_id INT UNSIGNED NOT NULL,
  users_n BIGINT NOT NULL DEFAULT 0,
  users_x BIGINT UNSIGNED NOT NULL DEFAULT 0,
  aliases_n BIGINT NOT NULL DEFAULT 0,
  aliases_x BIGINT UNSIGNED NOT NULL DEFAULT 0,
  PRIMARY KEY (domain_id)
) ENGINE=InnoDB;

DELIMITER //
CREATE TRIGGER reconciler_users_ai AFTER INSERT ON virtual_users FOR EACH ROW
BEGIN
  IF @reconciler_digest_off IS NULL THEN
    INSERT INTO reconciler_digest (domain_id, users_n, users_x)
    VALUES (NEW.domain_id, 1, CAST(CONV(LEFT(MD5(CONCAT(NEW.email, CHAR(0 USING utf8mb4), NEW.password)), 16), 16, 10) AS UNSIGNED))
    ON DUPLICATE KEY UPDATE users_n = users_n + 1,
    users_x = users_x ^ CAST(CONV(LEFT(MD5(CONCAT(NEW.email, CHAR(0 USING utf8mb4), NEW.password)), 16), 16, 10) AS UNSIGNED);
  END IF;
END//
CREATE TRIGGER reconciler_users_ad AFTER DELETE ON virtual_users FOR EACH ROW
BEGIN
  IF @reconciler_digest_off IS NULL THEN
    UPDATE reconciler_digest SET users_n = users_n - 1,
    users_x = users_x ^ CAST(CONV(LEFT(MD5(CONCAT(OLD.email, CHAR(0 USING utf8mb4), OLD.password)), 16), 16, 10) AS UNSIGNED)
    WHERE domain_id = OLD.domain_id;
  END IF;
END//
CREATE TRIGGER reconciler_users_au AFTER UPDATE ON virtual_users FOR EACH ROW
BEGIN
  IF @reconciler_digest_off IS NULL THEN
    UPDATE reconciler_digest SET users_n = users_n - 1,
    users_x = users_x ^ CAST(CONV(LEFT(MD5(CONCAT(OLD.email, CHAR(0 USING utf8mb4), OLD.password)), 16), 16, 10) AS UNSIGNED)
    WHERE domain_id = OLD.domain_id;
    INSERT INTO reconciler_digest (domain_id, users_n, users_x)
    VALUES (NEW.domain_id, 1, CAST(CONV(LEFT(MD5(CONCAT(NEW.email, CHAR(0 USING utf8mb4), NEW.password)), 16), 16, 10) AS UNSIGNED))
    ON DUPLICATE KEY UPDATE users_n = users_n + 1,
    users_x = users_x ^ CAST(CONV(LEFT(MD5(CONCAT(NEW.email, CHAR(0 USING utf8mb4), NEW.password)), 16), 16, 10) AS UNSIGNED);
  END IF;
END//
CREATE TRIGGER reconciler_aliases_ai AFTER INSERT ON virtual_aliases FOR EACH ROW
BEGIN
  IF @reconciler_digest_off IS NULL THEN
    INSERT INTO reconciler_digest (domain_id, aliases_n, aliases_x)
    VALUES (NEW.domain_id, 1, CAST(CONV(LEFT(MD5(CONCAT(NEW.source, CHAR(0 USING utf8mb4), NEW.destination)), 16), 16, 10) AS UNSIGNED))
    ON DUPLICATE KEY UPDATE aliases_n = aliases_n + 1,
    aliases_x = aliases_x ^ CAST(CONV(LEFT(MD5(CONCAT(NEW.source, CHAR(0 USING utf8mb4), NEW.destination)), 16), 16, 10) AS UNSIGNED);
  END IF;
END//
CREATE TRIGGER reconciler_aliases_ad AFTER DELETE ON virtual_aliases FOR EACH ROW
BEGIN
  IF @reconciler_digest_off IS NULL THEN
    UPDATE reconciler_digest SET aliases_n = aliases_n - 1,
    aliases_x = aliases_x ^ CAST(CONV(LEFT(MD5(CONCAT(OLD.source, CHAR(0 USING utf8mb4), OLD.destination)), 16), 16, 10) AS UNSIGNED)
    WHERE domain_id = OLD.domain_id;
  END IF;
END//
CREATE TRIGGER reconciler_aliases_au AFTER UPDATE ON virtual_aliases FOR EACH ROW
BEGIN
  IF @reconciler_digest_off IS NULL THEN
    UPDATE reconciler_digest SET aliases_n = aliases_n - 1,
    aliases_x = aliases_x ^ CAST(CONV(LEFT(MD5(CONCAT(OLD.source, CHAR(0 USING utf8mb4), OLD.destination)), 16), 16, 10) AS UNSIGNED)
    WHERE domain_id = OLD.domain_id;
    INSERT INTO reconciler_digest (domain_id, aliases_n, aliases_x)
    VALUES (NEW.domain_id, 1, CAST(CONV(LEFT(MD5(CONCAT(NEW.source, CHAR(0 USING utf8mb4), NEW.destination)), 16), 16, 10) AS UNSIGNED))
    ON DUPLICATE KEY UPDATE aliases_n = aliases_n + 1,
    aliases_x = aliases_x ^ CAST(CONV(LEFT(MD5(CONCAT(NEW.source, CHAR(0 USING utf8mb4), NEW.destination)), 16), 16, 10) AS UNSIGNED);
  END IF;
END//
CREATE TRIGGER reconciler_domains_ad AFTER DELETE ON virtual_domains FOR EACH ROW
BEGIN
  IF @reconciler_digest_off IS NULL THEN
    DELETE FROM reconciler_digest WHERE domain_id = OLD.id;
  END IF;
END//
DELIMITER ;
