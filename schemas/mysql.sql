-- Tables of SPEC section 2, as the Postfix lookup queries of example-repo read them.
-- Idempotent: `reconciler init-db` runs this on every start; `schemas/mysql.sql` is a copy (a test
-- keeps them equal). Collation is case-insensitive because Postfix folds lookup keys to lower case
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
