"""On PostgreSQL, the triggers that make sealing the only way into the chain.

- An event is inserted unsealed: an INSERT that sets sequence, prev_hash or hash is refused.
  Its time is the writer's when that is within a minute of the database's clock, else the
  database's: no writer dates an event far from when it was written. Its data is at most
  256 KiB and 64 levels deep, and no number in it has more than 1000 digits, so every event
  can be sealed (a sealer that could not encode one would stop there).
- An UPDATE of an event is a seal or nothing: only an unsealed event, only sequence, prev_hash
  and hash set, and occurred_at exactly as sealing dates it (its own time, or the previous
  event's if that is later); its content unchanged. A sealed event cannot change at all, and
  DELETE and TRUNCATE stay refused (migration 0002).
- After each sealing statement, the events it sealed must continue the chain from its head: the
  next sequence numbers without a gap, the first linked to the head's hash and each to the one
  before it. The trigger then moves the head to the last of them.
- A checkpoint is inserted only as the next link of the checkpoints' chain (`previous` is the
  SHA-256 of the last checkpoint's signature) and only over a sealed event, with its hash.

The two functions that write what the platform's role may not (the head; the checkpoints' lock)
run as the tables' owner (SECURITY DEFINER). They name every table with its schema, search
nothing else (`search_path` is pg_catalog, then pg_temp last, so no temporary object can stand
in for a table), may not be called by anyone (EXECUTE revoked from PUBLIC: a trigger runs its
function without that privilege), and check that they fire on the table they guard.

None of this binds the tables' owner, who may disable triggers: what reveals the owner's
rewrites are the outside witnesses (docs/audit.md, "Who can change what"). The trigger does not
recompute hashes (canonical JSON is Python's, audit/chain.py): a seal with a wrong hash is
refused nothing here, and found by verification as hash_mismatch.
"""

from django.db import migrations

GENESIS = "0" * 64

# The schema is filled in at migrate time; GENESIS is a constant: no input reaches this SQL.
FUNCTIONS = """
CREATE OR REPLACE FUNCTION {s}.audit_event_insert_unsealed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    now_ timestamptz := clock_timestamp();
BEGIN
    IF NEW.sequence IS NOT NULL OR NEW.prev_hash IS NOT NULL OR NEW.hash IS NOT NULL THEN
        RAISE EXCEPTION 'audit events are inserted unsealed: only sealing gives one its place '
            'in the chain' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.occurred_at IS NULL OR NEW.occurred_at < now_ - interval '1 minute'
            OR NEW.occurred_at > now_ + interval '1 minute' THEN
        NEW.occurred_at := now_;
    END IF;
    IF octet_length(NEW.data::text) > 262144
            OR jsonb_path_exists(NEW.data, 'strict $.**{{64 to last}}')
            OR jsonb_path_exists(
                NEW.data, 'strict $.** ? (@.type() == "number" && @.abs() >= 1e1000)') THEN
        RAISE EXCEPTION 'audit event data is limited to 256 KiB, 64 levels and numbers of '
            '1000 digits' USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION {s}.audit_event_seal_row() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.sequence IS NOT NULL THEN
        RAISE EXCEPTION 'sealed audit event % cannot change', OLD.sequence
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.sequence IS NULL OR NEW.prev_hash !~ '^[0-9a-f]{{64}}$'
            OR NEW.hash !~ '^[0-9a-f]{{64}}$' THEN
        RAISE EXCEPTION 'an audit event is changed only to seal it: sequence, prev_hash and '
            'hash (64 hex digits) together' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id
            OR NEW.actor_type IS DISTINCT FROM OLD.actor_type
            OR NEW.actor_id IS DISTINCT FROM OLD.actor_id
            OR NEW.action IS DISTINCT FROM OLD.action
            OR NEW.subject_type IS DISTINCT FROM OLD.subject_type
            OR NEW.subject_id IS DISTINCT FROM OLD.subject_id
            OR NEW.data IS DISTINCT FROM OLD.data
            OR NEW.occurred_at < OLD.occurred_at THEN
        RAISE EXCEPTION 'sealing audit event % would change what it records', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION {s}.audit_event_advance_head() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
    lo bigint;
    hi bigint;
    head_sequence bigint;
    head_hash text;
    head_time timestamptz;
BEGIN
    IF TG_TABLE_SCHEMA <> '{schema}' OR TG_TABLE_NAME <> 'audit_event' OR TG_OP <> 'UPDATE'
            OR TG_LEVEL <> 'STATEMENT' THEN
        RAISE EXCEPTION 'audit_event_advance_head guards {schema}.audit_event only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT count(*), min(sequence), max(sequence) INTO n, lo, hi FROM sealed;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    SELECT sequence, hash, occurred_at INTO head_sequence, head_hash, head_time
        FROM {s}.audit_chain_head WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM {s}.audit_event WHERE sequence < lo) THEN
            RAISE EXCEPTION 'the audit chain head is missing'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        head_sequence := 0;
        head_hash := '{genesis}';
        head_time := '-infinity';
        INSERT INTO {s}.audit_chain_head (id, sequence, hash, occurred_at)
            VALUES (1, 0, head_hash, now());
    END IF;
    IF lo <> head_sequence + 1 OR hi - lo + 1 <> n THEN
        RAISE EXCEPTION 'audit events are sealed as the next links of the chain: events % to '
            '% were expected, % to % were sealed', head_sequence + 1, head_sequence + n, lo, hi
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Each sealed event against the one before it (lag over the batch: one pass, no join of
    -- the batch with itself), and its time against the time it was inserted with.
    IF EXISTS (
        SELECT 1
        FROM (
            SELECT s.sequence, s.prev_hash, s.occurred_at, b.occurred_at AS inserted_at,
                   coalesce(lag(s.hash) OVER w, head_hash) AS before_hash,
                   coalesce(lag(s.occurred_at) OVER w, head_time) AS before_time
            FROM sealed s JOIN before_seal b ON b.id = s.id
            WINDOW w AS (ORDER BY s.sequence)
        ) links
        WHERE links.prev_hash <> links.before_hash
           OR links.occurred_at <> greatest(links.inserted_at, links.before_time)
    ) THEN
        RAISE EXCEPTION 'a sealed audit event does not link to the one before it, or is not '
            'dated as sealing dates it' USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE {s}.audit_chain_head h SET sequence = s.sequence, hash = s.hash,
            occurred_at = s.occurred_at
        FROM sealed s WHERE s.sequence = hi AND h.id = 1;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION {s}.audit_checkpoint_link() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    last_sequence bigint;
    last_signature text;
BEGIN
    IF TG_TABLE_SCHEMA <> '{schema}' OR TG_TABLE_NAME <> 'audit_checkpoint' OR TG_OP <> 'INSERT'
            OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'audit_checkpoint_link guards {schema}.audit_checkpoint only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM {s}.audit_event WHERE sequence = NEW.sequence AND hash = NEW.hash
    ) THEN
        RAISE EXCEPTION 'a checkpoint signs a sealed event: there is no event % with that hash',
            NEW.sequence USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT sequence, signature INTO last_sequence, last_signature FROM {s}.audit_checkpoint
        ORDER BY sequence DESC LIMIT 1 FOR UPDATE;
    IF FOUND AND (NEW.previous IS DISTINCT FROM
                      encode(sha256(convert_to(last_signature, 'UTF8')), 'hex')
                  OR NEW.sequence <= last_sequence) THEN
        RAISE EXCEPTION 'a checkpoint follows the last one: previous must be the SHA-256 of '
            'its signature, and its sequence past event %', last_sequence
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT FOUND AND NEW.previous IS DISTINCT FROM '{genesis}' THEN
        RAISE EXCEPTION 'the first checkpoint has previous = 64 zeros'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION {s}.audit_event_insert_unsealed() FROM PUBLIC;
REVOKE ALL ON FUNCTION {s}.audit_event_seal_row() FROM PUBLIC;
REVOKE ALL ON FUNCTION {s}.audit_event_advance_head() FROM PUBLIC;
REVOKE ALL ON FUNCTION {s}.audit_checkpoint_link() FROM PUBLIC;
REVOKE ALL ON FUNCTION {s}.audit_refuse_change() FROM PUBLIC;
"""

TRIGGERS = """
DROP TRIGGER IF EXISTS audit_event_no_change ON {s}.audit_event;
CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON {s}.audit_event
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_refuse_change();
CREATE TRIGGER audit_event_insert BEFORE INSERT ON {s}.audit_event
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_event_insert_unsealed();
CREATE TRIGGER audit_event_seal BEFORE UPDATE ON {s}.audit_event
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_event_seal_row();
CREATE TRIGGER audit_event_sealed AFTER UPDATE ON {s}.audit_event
    REFERENCING OLD TABLE AS before_seal NEW TABLE AS sealed
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.audit_event_advance_head();
CREATE TRIGGER audit_checkpoint_link BEFORE INSERT ON {s}.audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_checkpoint_link();
"""

UNDO = """
DROP TRIGGER IF EXISTS audit_checkpoint_link ON {s}.audit_checkpoint;
DROP TRIGGER IF EXISTS audit_event_sealed ON {s}.audit_event;
DROP TRIGGER IF EXISTS audit_event_seal ON {s}.audit_event;
DROP TRIGGER IF EXISTS audit_event_insert ON {s}.audit_event;
DROP TRIGGER IF EXISTS audit_event_no_delete ON {s}.audit_event;
CREATE TRIGGER audit_event_no_change BEFORE UPDATE OR DELETE ON {s}.audit_event
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_refuse_change();
DROP FUNCTION IF EXISTS {s}.audit_checkpoint_link();
DROP FUNCTION IF EXISTS {s}.audit_event_advance_head();
DROP FUNCTION IF EXISTS {s}.audit_event_seal_row();
DROP FUNCTION IF EXISTS {s}.audit_event_insert_unsealed();
"""


def _sql(template, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        schema = cursor.fetchone()[0]
    if not schema.replace("_", "").isalnum():
        raise ValueError(f"the audit triggers expect a plain schema name, not {schema!r}")
    quoted = schema_editor.quote_name(schema)
    return template.format(s=quoted, schema=schema, genesis=GENESIS)


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_sql(FUNCTIONS, schema_editor), params=None)
        schema_editor.execute(_sql(TRIGGERS, schema_editor), params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_sql(UNDO, schema_editor), params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_sealing")]

    operations = [migrations.RunPython(install, uninstall, elidable=False)]
