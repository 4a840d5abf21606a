-- PeerPath database bootstrap: what a DBA runs once on the PostgreSQL server (15 or later),
-- as a superuser or a role with CREATEDB and CREATEROLE. Safe to run again.
--
--   psql "postgresql://postgres@db.example.org/postgres" -v ON_ERROR_STOP=1 -f bootstrap.sql
--
-- One database; per service a schema <service>, owned by peerpath_<service>_owner (it applies
-- the migrations: the `migrate` init container), and a login role peerpath_<service> the
-- service serves as. The runtime role owns nothing and cannot bypass row-level security; each
-- migration run grants it USAGE on its schema and the table privileges it needs, nothing on the
-- other services' schemas. tools/lib.sh (bootstrap_database) does the same for local runs.
--
-- No passwords here. Afterwards give each login role its credential, e.g. in psql
--   \password peerpath_consent_owner
--   \password peerpath_consent
-- (or map them to certificate / cloud IAM authentication in pg_hba.conf), and store the URIs in
-- the Kubernetes Secrets peerpath-<service>-db-owner and peerpath-<service>-db (key `url`), e.g.
--   postgresql://peerpath_consent@db.example.org:5432/peerpath?sslmode=verify-full

SELECT 'CREATE DATABASE peerpath'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'peerpath')
\gexec

\connect peerpath
SET client_min_messages = warning;

-- Nobody but the PeerPath roles (and the DBA) may connect or create anything outside them.
REVOKE ALL ON DATABASE peerpath FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

DO $bootstrap$
DECLARE
  service text;
  owner_role text;
  runtime_role text;
BEGIN
  FOREACH service IN ARRAY ARRAY['matching', 'checkin', 'consent', 'escalation', 'evaluation'] LOOP
    owner_role := format('peerpath_%s_owner', service);
    runtime_role := format('peerpath_%s', service);

    -- The owner connects only to migrate (one connection per starting pod).
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = owner_role) THEN
      EXECUTE format('CREATE ROLE %I LOGIN', owner_role);
    END IF;
    EXECUTE format('ALTER ROLE %I NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
                   'CONNECTION LIMIT 10', owner_role);

    -- The runtime role: pool size (8) x replicas (consent: 8 + 1 listening for its decision
    -- cache), with room for a rolling update.
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = runtime_role) THEN
      EXECUTE format('CREATE ROLE %I LOGIN', runtime_role);
    END IF;
    EXECUTE format('ALTER ROLE %I NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
                   'CONNECTION LIMIT 64', runtime_role);

    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', service, owner_role);
    -- An existing schema keeps its owner in CREATE SCHEMA IF NOT EXISTS; make sure.
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', service, owner_role);

    EXECUTE format('GRANT CONNECT ON DATABASE peerpath TO %I, %I', owner_role, runtime_role);
  END LOOP;
END
$bootstrap$;
