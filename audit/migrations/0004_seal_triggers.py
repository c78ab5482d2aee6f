"""On PostgreSQL, the triggers that make sealing the only way into the chain.

- An event is inserted unsealed: an INSERT that sets sequence, prev_hash or hash is refused.
- An UPDATE of an event is a seal or nothing: only an unsealed event, only sequence, prev_hash
  and hash set (and occurred_at moved later, never earlier), its content unchanged. A sealed
  event cannot change at all, and DELETE and TRUNCATE stay refused (migration 0002).
- After each sealing statement, the events it sealed must continue the chain from its head:
  the next sequence numbers without a gap, the first linked to the head's hash, each to the one
  before it, times never going back. The trigger then moves the head to the last of them. Its
  function runs as the owner of the tables (SECURITY DEFINER), so the platform's role, which
  may not write the head (docs/deploy.md, "Database roles"), moves it only this way.
- A checkpoint is inserted only as the next link of the checkpoints' chain: `previous` is the
  SHA-256 of the last checkpoint's signature, and its sequence is past that checkpoint's.

None of this binds the tables' owner, who may disable triggers: what reveals the owner's
rewrites are the outside witnesses (docs/audit.md, "Who can change what").
"""

from django.db import migrations

GENESIS = "0" * 64

# A constant (GENESIS only): no input reaches this SQL.
FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION audit_event_insert_unsealed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.sequence IS NOT NULL OR NEW.prev_hash IS NOT NULL OR NEW.hash IS NOT NULL THEN
        RAISE EXCEPTION 'audit events are inserted unsealed: only sealing gives one its place '
            'in the chain' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION audit_event_seal_row() RETURNS trigger
LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION audit_event_advance_head() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    lo bigint;
    hi bigint;
    head_sequence bigint;
    head_hash text;
    head_time timestamptz;
BEGIN
    SELECT count(*), min(sequence), max(sequence) INTO n, lo, hi FROM sealed;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    SELECT sequence, hash, occurred_at INTO head_sequence, head_hash, head_time
        FROM audit_chain_head WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM audit_event WHERE sequence < lo) THEN
            RAISE EXCEPTION 'the audit chain head is missing'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        head_sequence := 0;
        head_hash := '{GENESIS}';
        head_time := '-infinity';
        INSERT INTO audit_chain_head (id, sequence, hash, occurred_at)
            VALUES (1, 0, head_hash, now());
    END IF;
    IF lo <> head_sequence + 1 OR hi - lo + 1 <> n THEN
        RAISE EXCEPTION 'audit events are sealed as the next links of the chain: events % to '
            '% were expected, % to % were sealed', head_sequence + 1, head_sequence + n, lo, hi
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (
        SELECT 1 FROM sealed s LEFT JOIN sealed p ON p.sequence = s.sequence - 1
        WHERE (s.sequence = lo AND (s.prev_hash <> head_hash OR s.occurred_at < head_time))
           OR (s.sequence > lo AND (s.prev_hash <> p.hash OR s.occurred_at < p.occurred_at))
    ) THEN
        RAISE EXCEPTION 'a sealed audit event does not link to the one before it'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE audit_chain_head h SET sequence = s.sequence, hash = s.hash,
            occurred_at = s.occurred_at
        FROM sealed s WHERE s.sequence = hi AND h.id = 1;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION audit_checkpoint_link() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    last_sequence bigint;
    last_signature text;
BEGIN
    SELECT sequence, signature INTO last_sequence, last_signature FROM audit_checkpoint
        ORDER BY sequence DESC LIMIT 1 FOR UPDATE;
    IF FOUND AND (NEW.previous IS DISTINCT FROM
                      encode(sha256(convert_to(last_signature, 'UTF8')), 'hex')
                  OR NEW.sequence <= last_sequence) THEN
        RAISE EXCEPTION 'a checkpoint follows the last one: previous must be the SHA-256 of '
            'its signature, and its sequence past event %', last_sequence
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT FOUND AND NEW.previous IS DISTINCT FROM '{GENESIS}' THEN
        RAISE EXCEPTION 'the first checkpoint has previous = 64 zeros'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
"""  # noqa: S608

TRIGGERS = """
DROP TRIGGER IF EXISTS audit_event_no_change ON audit_event;
CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_event_insert BEFORE INSERT ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_insert_unsealed();
CREATE TRIGGER audit_event_seal BEFORE UPDATE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_seal_row();
CREATE TRIGGER audit_event_sealed AFTER UPDATE ON audit_event
    REFERENCING NEW TABLE AS sealed FOR EACH STATEMENT EXECUTE FUNCTION audit_event_advance_head();
CREATE TRIGGER audit_checkpoint_link BEFORE INSERT ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_link();
"""

UNDO = """
DROP TRIGGER IF EXISTS audit_checkpoint_link ON audit_checkpoint;
DROP TRIGGER IF EXISTS audit_event_sealed ON audit_event;
DROP TRIGGER IF EXISTS audit_event_seal ON audit_event;
DROP TRIGGER IF EXISTS audit_event_insert ON audit_event;
DROP TRIGGER IF EXISTS audit_event_no_delete ON audit_event;
CREATE TRIGGER audit_event_no_change BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
DROP FUNCTION IF EXISTS audit_checkpoint_link();
DROP FUNCTION IF EXISTS audit_event_advance_head();
DROP FUNCTION IF EXISTS audit_event_seal_row();
DROP FUNCTION IF EXISTS audit_event_insert_unsealed();
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTIONS, params=None)
        schema_editor.execute(TRIGGERS, params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(UNDO, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_sealing")]

    operations = [migrations.RunPython(install, uninstall, elidable=False)]
