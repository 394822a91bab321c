-- facescan: the queue's state machine, as PostgreSQL functions.
--
-- The operator and the detector call these by name (see queries.sql) and never write
-- the tables directly, so they cannot disagree about a transition. Re-applied by
-- `facescan db migrate` after the migrations (everything here is CREATE OR REPLACE).
--
-- Errors raised here carry facescan's own SQLSTATEs, mapped to typed Python errors by
-- facescan_queue.errors:
--   FS001 lease lost (the caller no longer holds the image: fencing)
--   FS002 illegal transition (e.g. complete an image that was never started)
--   FS003 unknown library
--   FS004 unknown image
--   FS005 invalid argument (a face embedding of the wrong size, a bad limit)
--   FS006 the session's role may not use that library (facescan.authorize)
--
-- Access: every function a client calls by name is SECURITY DEFINER (it runs as the
-- schema's owner, with a fixed search_path: see the end of this file) and first checks
-- the library of the rows it touches with facescan.authorize, once per call, never per
-- row. A role granted one library (`facescan db grant`) needs no table privilege and
-- reaches no other library; helpers called only from those functions stay SECURITY
-- INVOKER, so calling one directly needs the table privileges such a role lacks.

-- Access ---------------------------------------------------------------------------

-- Whether the session's role may use every library: the schema's owner (a member of
-- it, a superuser), or a role holding every privilege on facescan.images, which could
-- write any library's rows directly anyway. session_user: inside a SECURITY DEFINER
-- function current_user is the owner.
CREATE OR REPLACE FUNCTION facescan.unrestricted() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT pg_has_role(session_user, n.nspowner, 'MEMBER')
        OR (has_table_privilege(session_user, 'facescan.images'::regclass, 'SELECT')
            AND has_table_privilege(session_user, 'facescan.images'::regclass, 'INSERT')
            AND has_table_privilege(session_user, 'facescan.images'::regclass, 'UPDATE')
            AND has_table_privilege(session_user, 'facescan.images'::regclass, 'DELETE'))
    FROM pg_namespace n WHERE n.nspname = 'facescan'
$$;

-- Raises FS006 unless the session's role may use p_library (NULL: every library), for a
-- detector's calls or, with p_operator, the control plane's. DETAIL carries the library
-- and HINT the level, for the client's advice.
CREATE OR REPLACE FUNCTION facescan.authorize(p_library text, p_operator boolean)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_library IS NOT NULL AND EXISTS (
        SELECT 1 FROM facescan.library_roles r
        WHERE r.role = session_user AND r.library = p_library AND (r.operator OR NOT p_operator)
    ) THEN
        RETURN;
    END IF;
    IF facescan.unrestricted() THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'role % may not use %', session_user,
        coalesce('library ' || p_library, 'every library')
        USING ERRCODE = 'FS006', DETAIL = coalesce(p_library, ''),
              HINT = CASE WHEN p_operator THEN 'operator' ELSE 'detector' END;
END
$$;

-- What the session's role may use: every library, or the ones granted to it.
CREATE OR REPLACE FUNCTION facescan.access()
RETURNS TABLE (unrestricted boolean, libraries text[], operator_libraries text[])
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.unrestricted(),
           coalesce(array_agg(r.library ORDER BY r.library), '{}'),
           coalesce(array_agg(r.library ORDER BY r.library) FILTER (WHERE r.operator), '{}')
    FROM facescan.library_roles r
    WHERE r.role = session_user
$$;

-- Lets p_role use p_library: a detector's calls, with p_operator the control plane's
-- too (a grant only adds). Run by the schema's owner (`facescan db grant`): the role
-- gets USAGE on the schema and SELECT on schema_version (the client's version check),
-- no table privilege. The role must exist.
CREATE OR REPLACE FUNCTION facescan.grant_library(
    p_role text, p_library text, p_operator boolean
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regrole(quote_ident(p_role)) IS NULL THEN
        RAISE EXCEPTION 'no database role %: create it first (CREATE ROLE % LOGIN PASSWORD ...)',
            quote_ident(p_role), quote_ident(p_role) USING ERRCODE = 'FS005';
    END IF;
    IF coalesce(p_library, '') = '' THEN
        RAISE EXCEPTION 'a grant needs a library name' USING ERRCODE = 'FS005';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA facescan TO %I', p_role);
    EXECUTE format('GRANT SELECT ON facescan.schema_version TO %I', p_role);
    INSERT INTO facescan.library_roles AS r (role, library, operator)
    VALUES (p_role, p_library, p_operator)
    ON CONFLICT (role, library) DO UPDATE SET operator = r.operator OR EXCLUDED.operator;
END
$$;

-- Takes p_library back from p_role (its schema USAGE stays: it reaches nothing more).
-- True when it had been granted.
CREATE OR REPLACE FUNCTION facescan.revoke_library(p_role text, p_library text)
RETURNS boolean
LANGUAGE sql AS $$
    WITH revoked AS (
        DELETE FROM facescan.library_roles WHERE role = p_role AND library = p_library
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM revoked)
$$;

-- The transition guard ---------------------------------------------------------

-- The legal moves (see schema.sql). count_images() refuses any other move of any
-- UPDATE statement on images, whoever makes it, so the functions below and a direct
-- write alike cannot break the state machine. (Checked once per statement over its
-- transition tables: a row trigger cost every claim and commit a second read of the row.)
CREATE OR REPLACE FUNCTION facescan.legal_transition(
    p_from facescan.image_state, p_to facescan.image_state
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_from = p_to
        OR (p_from = 'pending' AND p_to = 'leased')
        OR (p_from = 'leased' AND p_to IN ('done', 'pending', 'dead'))
        OR (p_from IN ('dead', 'done') AND p_to = 'pending')
$$;

DROP TRIGGER IF EXISTS images_guard ON facescan.images;
DROP FUNCTION IF EXISTS facescan.guard_image_transition();

-- Counters -------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION facescan.count_shard() RETURNS smallint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (pg_backend_pid() % 16)::smallint
$$;

-- Keeps facescan.image_counts equal to the images table, one statement at a time, and
-- refuses an UPDATE that makes an illegal move (legal_transition, above).
CREATE OR REPLACE FUNCTION facescan.count_images() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_illegal record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO facescan.image_counts AS c
            (library, state, step, size_class, error_type, degraded, missing, shard, images,
             faces)
        SELECT library, state, step, size_class, error_type, degraded, missing,
               facescan.count_shard(), count(*), sum(face_count)
        FROM (SELECT *, missing_since IS NOT NULL AS missing FROM new_rows) AS n
        GROUP BY library, state, step, size_class, error_type, degraded, missing
        ORDER BY library, state, step, size_class, error_type, degraded, missing
        ON CONFLICT ON CONSTRAINT image_counts_key
        DO UPDATE SET images = c.images + EXCLUDED.images, faces = c.faces + EXCLUDED.faces;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO facescan.image_counts AS c
            (library, state, step, size_class, error_type, degraded, missing, shard, images,
             faces)
        SELECT library, state, step, size_class, error_type, degraded, missing,
               facescan.count_shard(), -count(*), -sum(face_count)
        FROM (SELECT *, missing_since IS NOT NULL AS missing FROM old_rows) AS o
        GROUP BY library, state, step, size_class, error_type, degraded, missing
        ORDER BY library, state, step, size_class, error_type, degraded, missing
        ON CONFLICT ON CONSTRAINT image_counts_key
        DO UPDATE SET images = c.images + EXCLUDED.images, faces = c.faces + EXCLUDED.faces;
    ELSE
        -- each image's move, paired by grouping, not by joining the transition tables:
        -- the planner takes them for one row each and joined them in a nested loop,
        -- quadratic in the rows of the statement (10,000 rows: seconds)
        SELECT m.id, m.state, m.new_state INTO v_illegal
        FROM (
            SELECT t.id, min(t.state) FILTER (WHERE t.old) AS state,
                   min(t.state) FILTER (WHERE NOT t.old) AS new_state
            FROM (SELECT id, state, true AS old FROM old_rows
                  UNION ALL
                  SELECT id, state, false FROM new_rows) AS t
            GROUP BY t.id
        ) AS m
        WHERE NOT facescan.legal_transition(m.state, m.new_state)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'illegal transition of image %: % -> %',
                v_illegal.id, v_illegal.state, v_illegal.new_state USING ERRCODE = 'FS002';
        END IF;
        INSERT INTO facescan.image_counts AS c
            (library, state, step, size_class, error_type, degraded, missing, shard, images,
             faces)
        SELECT library, state, step, size_class, error_type, degraded, missing,
               facescan.count_shard(), sum(n), sum(f)
        FROM (
            SELECT library, state, step, size_class, error_type, degraded,
                   missing_since IS NOT NULL AS missing, 1 AS n, face_count AS f
            FROM new_rows
            UNION ALL
            SELECT library, state, step, size_class, error_type, degraded,
                   missing_since IS NOT NULL, -1, -face_count
            FROM old_rows
        ) AS delta
        GROUP BY library, state, step, size_class, error_type, degraded, missing
        HAVING sum(n) <> 0 OR sum(f) <> 0
        ORDER BY library, state, step, size_class, error_type, degraded, missing
        ON CONFLICT ON CONSTRAINT image_counts_key
        DO UPDATE SET images = c.images + EXCLUDED.images, faces = c.faces + EXCLUDED.faces;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER images_count_insert AFTER INSERT ON facescan.images
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION facescan.count_images();
CREATE OR REPLACE TRIGGER images_count_update AFTER UPDATE ON facescan.images
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION facescan.count_images();
CREATE OR REPLACE TRIGGER images_count_delete AFTER DELETE ON facescan.images
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION facescan.count_images();

-- Folds the shards into one row per group and drops empty groups.
CREATE OR REPLACE FUNCTION facescan.compact_counts() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_rows integer;
BEGIN
    LOCK TABLE facescan.image_counts IN EXCLUSIVE MODE;
    WITH folded AS (DELETE FROM facescan.image_counts RETURNING *)
    INSERT INTO facescan.image_counts
        (library, state, step, size_class, error_type, degraded, missing, shard, images, faces)
    SELECT library, state, step, size_class, error_type, degraded, missing, 0, sum(images),
           sum(faces)
    FROM folded
    GROUP BY library, state, step, size_class, error_type, degraded, missing
    HAVING sum(images) <> 0 OR sum(faces) <> 0;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

-- Rebuilds the counters of one library from the images themselves (a repair tool).
CREATE OR REPLACE FUNCTION facescan.recount(p_library text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE facescan.images IN SHARE MODE;
    LOCK TABLE facescan.image_counts IN EXCLUSIVE MODE;
    DELETE FROM facescan.image_counts WHERE library = p_library;
    INSERT INTO facescan.image_counts
        (library, state, step, size_class, error_type, degraded, missing, shard, images, faces)
    SELECT library, state, step, size_class, error_type, degraded, missing_since IS NOT NULL,
           0, count(*), sum(face_count)
    FROM facescan.images
    WHERE library = p_library
    GROUP BY library, state, step, size_class, error_type, degraded, missing_since IS NOT NULL;
END
$$;

-- Libraries and registration -----------------------------------------------------------

-- Creates the library or updates the settings given (NULL keeps the current value).
CREATE OR REPLACE FUNCTION facescan.ensure_library(
    p_name text,
    p_cascade_models text[] DEFAULT NULL,
    p_cascade_scales real[] DEFAULT NULL,
    p_backoff_base_s integer DEFAULT NULL,
    p_backoff_multiplier real DEFAULT NULL,
    p_backoff_cap_s integer DEFAULT NULL,
    p_max_attempts integer DEFAULT NULL,
    p_max_dimension integer DEFAULT NULL,
    p_frames_per_video integer DEFAULT NULL,
    p_min_frame_spacing_s real DEFAULT NULL
) RETURNS facescan.libraries
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_lib facescan.libraries;
BEGIN
    PERFORM facescan.authorize(p_name, true);
    INSERT INTO facescan.libraries (name) VALUES (p_name) ON CONFLICT (name) DO NOTHING;
    UPDATE facescan.libraries SET
        cascade_models = coalesce(p_cascade_models, cascade_models),
        cascade_scales = coalesce(p_cascade_scales, cascade_scales),
        backoff_base_s = coalesce(p_backoff_base_s, backoff_base_s),
        backoff_multiplier = coalesce(p_backoff_multiplier, backoff_multiplier),
        backoff_cap_s = coalesce(p_backoff_cap_s, backoff_cap_s),
        max_attempts = coalesce(p_max_attempts, max_attempts),
        max_dimension = coalesce(p_max_dimension, max_dimension),
        frames_per_video = coalesce(p_frames_per_video, frames_per_video),
        min_frame_spacing_s = coalesce(p_min_frame_spacing_s, min_frame_spacing_s)
    WHERE name = p_name
    RETURNING * INTO v_lib;
    RETURN v_lib;
END
$$;

-- Registers the files a registration found (idempotent):
--   a new path is added (pending);
--   a registered path whose file changed (another size, or another modification time,
--     where both are known: an image registered without one gets it filled in, unchanged)
--     is queued again from the first cascade step with its old result deleted
--     (restart_images), its header facts replaced; one leased right now is left as it is
--     (its worker may be reading either version): its stored size and time still differ,
--     so the next registration redoes it (counted as deferred);
--   a path marked missing is unmarked (returned), and redone if it changed.
-- p_kinds says which files are videos (NULL: all photos), p_durations their durations
-- in ms from the container header (NULL where unknown).
-- Returns how many paths were added, changed (queued again), returned and deferred.
CREATE OR REPLACE FUNCTION facescan.register_images(
    p_library text,
    p_paths text[],
    p_widths integer[],
    p_heights integer[],
    p_file_bytes bigint[],
    p_priority smallint DEFAULT 0,
    p_mtimes timestamptz[] DEFAULT NULL,
    p_kinds facescan.media_kind[] DEFAULT NULL,
    p_durations integer[] DEFAULT NULL
) RETURNS TABLE (added integer, changed integer, returned integer, deferred integer)
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_added integer;
    v_changed bigint[];
    v_redone bigint[];
    v_returned integer;
BEGIN
    PERFORM facescan.authorize(p_library, true);
    IF NOT EXISTS (SELECT 1 FROM facescan.libraries WHERE name = p_library) THEN
        RAISE EXCEPTION 'unknown library %', p_library USING ERRCODE = 'FS003';
    END IF;
    WITH inserted AS (
        INSERT INTO facescan.images
            (library, path, width, height, file_bytes, file_mtime, size_class, priority, kind,
             duration_ms)
        SELECT p_library, u.path, u.width, u.height, u.file_bytes, u.mtime,
               facescan.size_class(u.width, u.height), p_priority, coalesce(u.kind, 'image'),
               u.duration_ms
        FROM unnest(p_paths, p_widths, p_heights, p_file_bytes, p_mtimes, p_kinds, p_durations)
            AS u (path, width, height, file_bytes, mtime, kind, duration_ms)
        ON CONFLICT (library, path) DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer INTO v_added FROM inserted;

    -- the registered files that changed, and those found again (this call's new rows
    -- match their own facts)
    SELECT coalesce(array_agg(i.id) FILTER (
               WHERE (i.file_bytes <> u.file_bytes OR i.file_mtime <> u.mtime) IS TRUE), '{}'),
           count(*) FILTER (WHERE i.missing_since IS NOT NULL)
    INTO v_changed, v_returned
    FROM unnest(p_paths, p_file_bytes, p_mtimes) AS u (path, file_bytes, mtime)
    JOIN facescan.images i ON i.library = p_library AND i.path = u.path;

    SELECT coalesce(array_agg(r.id), '{}') INTO v_redone
    FROM facescan.restart_images(v_changed, true) AS r (id);

    -- new facts of the redone ones; a time or size filled in where none was known; found
    -- again (a leased image is never missing, and its facts are not filled in under its
    -- worker: the next registration does it)
    UPDATE facescan.images i SET
        width = CASE WHEN i.id = ANY (v_redone) THEN u.width ELSE i.width END,
        height = CASE WHEN i.id = ANY (v_redone) THEN u.height ELSE i.height END,
        size_class = CASE WHEN i.id = ANY (v_redone)
                          THEN facescan.size_class(u.width, u.height) ELSE i.size_class END,
        file_bytes = CASE WHEN i.id = ANY (v_redone) THEN u.file_bytes
                          ELSE coalesce(i.file_bytes, u.file_bytes) END,
        file_mtime = CASE WHEN i.id = ANY (v_redone) THEN u.mtime
                          ELSE coalesce(i.file_mtime, u.mtime) END,
        kind = CASE WHEN i.id = ANY (v_redone) THEN coalesce(u.kind, 'image') ELSE i.kind END,
        duration_ms = CASE WHEN i.id = ANY (v_redone) THEN u.duration_ms
                           ELSE i.duration_ms END,
        missing_since = NULL,
        updated_at = now()
    FROM unnest(p_paths, p_widths, p_heights, p_file_bytes, p_mtimes, p_kinds, p_durations)
        AS u (path, width, height, file_bytes, mtime, kind, duration_ms)
    WHERE i.library = p_library AND i.path = u.path
      AND (i.id = ANY (v_redone)
           OR i.missing_since IS NOT NULL
           OR (i.state <> 'leased'
               AND ((i.file_mtime IS NULL AND u.mtime IS NOT NULL)
                    OR (i.file_bytes IS NULL AND u.file_bytes IS NOT NULL))));

    RETURN QUERY SELECT v_added, cardinality(v_redone),
        v_returned::integer, cardinality(v_changed) - cardinality(v_redone);
END
$$;

-- The registered paths of a library that p_seen (every file of a complete walk of the
-- library root) lacks: the candidates to mark missing, once the caller has checked that
-- each is really gone. Leased and already missing images are not listed.
CREATE OR REPLACE FUNCTION facescan.unseen_images(p_library text, p_seen text[])
RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT i.path FROM facescan.images i
    WHERE i.library = p_library AND i.missing_since IS NULL AND i.state <> 'leased'
      AND NOT EXISTS (SELECT 1 FROM unnest(p_seen) AS s (path) WHERE s.path = i.path)
    ORDER BY i.path
$$;

-- Marks the images of these paths missing (gone from the library root): never claimed
-- until a registration sees them again, their results and state kept. Leased images
-- are left as they are (their worker finds out). Returns how many were marked.
CREATE OR REPLACE FUNCTION facescan.mark_missing(p_library text, p_paths text[])
RETURNS integer
LANGUAGE sql SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    WITH marked AS (
        UPDATE facescan.images i SET missing_since = now(), updated_at = now()
        WHERE i.library = p_library AND i.path = ANY (p_paths)
          AND i.missing_since IS NULL AND i.state <> 'leased'
        RETURNING 1
    )
    SELECT count(*)::integer FROM marked
$$;

-- Claiming and processing ----------------------------------------------------------

-- Leases up to p_limit runnable images of one (cascade step, size class) group to
-- p_owner, best first (priority, then fewest attempts). Concurrent claimers never get
-- the same image (SKIP LOCKED). No lease is left behind when nothing was claimed.
CREATE OR REPLACE FUNCTION facescan.claim_batch(
    p_library text,
    p_owner text,
    p_step smallint,
    p_size_class smallint,
    p_limit integer,
    p_lease_seconds integer
) RETURNS TABLE (
    image_id bigint, path text, width integer, height integer, file_bytes bigint,
    attempts smallint
)
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_column
BEGIN
    IF p_limit < 1 OR p_lease_seconds < 1 THEN
        RAISE EXCEPTION 'claim_batch needs a positive limit and lease (got %, % s)',
            p_limit, p_lease_seconds USING ERRCODE = 'FS005';
    END IF;
    -- a detector claims its own batch (a Job's pod, when it starts): a detector's call
    PERFORM facescan.authorize(p_library, false);
    IF NOT EXISTS (SELECT 1 FROM facescan.libraries WHERE name = p_library) THEN
        RAISE EXCEPTION 'unknown library %', p_library USING ERRCODE = 'FS003';
    END IF;
    INSERT INTO facescan.leases (owner, library, step, size_class, expires_at)
    VALUES (p_owner, p_library, p_step, p_size_class,
            now() + make_interval(secs => p_lease_seconds))
    ON CONFLICT (owner) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease % is already held: every batch needs a new owner name', p_owner
            USING ERRCODE = 'FS002';
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT i.id FROM facescan.images i
        WHERE i.library = p_library AND i.state = 'pending' AND i.missing_since IS NULL
          AND i.step = p_step AND i.size_class = p_size_class AND i.next_attempt_at <= now()
        ORDER BY i.priority DESC, i.attempts, i.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE facescan.images i
    SET state = 'leased', lease_owner = p_owner, updated_at = now()
    FROM picked
    WHERE i.id = picked.id
    RETURNING i.id, i.path, i.width, i.height, i.file_bytes, i.attempts;
    IF NOT FOUND THEN
        DELETE FROM facescan.leases WHERE owner = p_owner;
    END IF;
END
$$;

-- Extends the lease. False when it is gone (reclaimed): the worker must stop.
CREATE OR REPLACE FUNCTION facescan.heartbeat(p_owner text, p_lease_seconds integer)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_library text;
BEGIN
    SELECT l.library INTO v_library FROM facescan.leases l WHERE l.owner = p_owner;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM facescan.authorize(v_library, false);
    UPDATE facescan.leases
    SET expires_at = now() + make_interval(secs => p_lease_seconds), heartbeat_at = now()
    WHERE owner = p_owner;
    RETURN FOUND;
END
$$;

-- Marks the next unstarted image of the lease as in progress (an open attempt) and
-- returns it with the model and scale of its cascade step and the library's max
-- dimension (and, for a video, its duration and how the library samples its frames);
-- no row when none is left.
-- While an image is in progress under the lease, returns that one instead.
CREATE OR REPLACE FUNCTION facescan.start_next(p_owner text)
RETURNS TABLE (
    image_id bigint, path text, width integer, height integer, file_bytes bigint,
    step smallint, model text, scale real, attempt_id bigint, max_dimension integer,
    kind facescan.media_kind, duration_ms integer, frames_per_video integer,
    min_frame_spacing_s real
)
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_column
DECLARE
    v_library text;
BEGIN
    SELECT l.library INTO v_library FROM facescan.leases l WHERE l.owner = p_owner;
    IF NOT FOUND THEN  -- no lease: nothing leased to p_owner either
        RETURN;
    END IF;
    PERFORM facescan.authorize(v_library, false);
    -- idempotent: an image already in progress under this lease is returned again (the
    -- worker lost the reply of the call that started it)
    RETURN QUERY
    SELECT i.id, i.path, i.width, i.height, i.file_bytes, a.step, a.model, a.scale, a.id,
           lib.max_dimension, i.kind, i.duration_ms, lib.frames_per_video,
           lib.min_frame_spacing_s
    FROM facescan.leases l
    JOIN facescan.images i
      ON i.id = l.started_image AND i.lease_owner = l.owner AND i.state = 'leased'
    JOIN facescan.attempts a ON a.id = l.started_attempt
    JOIN facescan.libraries lib ON lib.name = l.library
    WHERE l.owner = p_owner;
    IF NOT FOUND THEN
        RETURN QUERY SELECT * FROM facescan.start_unstarted(p_owner);
    END IF;
END
$$;

-- start_next once nothing is in progress under the lease: every image still leased to
-- p_owner is unstarted. (complete_and_start_next calls it directly.)
CREATE OR REPLACE FUNCTION facescan.start_unstarted(p_owner text)
RETURNS TABLE (
    image_id bigint, path text, width integer, height integer, file_bytes bigint,
    step smallint, model text, scale real, attempt_id bigint, max_dimension integer,
    kind facescan.media_kind, duration_ms integer, frames_per_video integer,
    min_frame_spacing_s real
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_id bigint;
    v_library text;
    v_path text;
    v_width integer;
    v_height integer;
    v_file_bytes bigint;
    v_image_step smallint;
    v_models text[];
    v_scales real[];
    v_step smallint;
    v_attempt bigint;
    v_max_dimension integer;
    v_kind facescan.media_kind;
    v_duration_ms integer;
    v_frames_per_video integer;
    v_min_frame_spacing_s real;
BEGIN
    SELECT i.id, i.library, i.path, i.width, i.height, i.file_bytes, i.step,
           lib.cascade_models, lib.cascade_scales, lib.max_dimension, i.kind, i.duration_ms,
           lib.frames_per_video, lib.min_frame_spacing_s
    INTO v_id, v_library, v_path, v_width, v_height, v_file_bytes, v_image_step,
         v_models, v_scales, v_max_dimension, v_kind, v_duration_ms, v_frames_per_video,
         v_min_frame_spacing_s
    FROM facescan.images i JOIN facescan.libraries lib ON lib.name = i.library
    WHERE i.lease_owner = p_owner AND i.state = 'leased'
    ORDER BY i.priority DESC, i.attempts, i.id
    LIMIT 1
    FOR UPDATE OF i;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_step := least(v_image_step, cardinality(v_models) - 1);
    INSERT INTO facescan.attempts (image_id, library, worker, step, model, scale)
    VALUES (v_id, v_library, p_owner, v_step, v_models[v_step + 1], v_scales[v_step + 1])
    RETURNING id INTO v_attempt;
    UPDATE facescan.leases SET started_image = v_id, started_attempt = v_attempt
    WHERE owner = p_owner;
    IF v_step <> v_image_step THEN  -- the cascade was shortened meanwhile
        UPDATE facescan.images SET step = v_step WHERE id = v_id;
    END IF;
    image_id := v_id;
    path := v_path;
    width := v_width;
    height := v_height;
    file_bytes := v_file_bytes;
    step := v_step;
    model := v_models[v_step + 1];
    scale := v_scales[v_step + 1];
    attempt_id := v_attempt;
    max_dimension := v_max_dimension;
    kind := v_kind;
    duration_ms := v_duration_ms;
    frames_per_video := v_frames_per_video;
    min_frame_spacing_s := v_min_frame_spacing_s;
    RETURN NEXT;
END
$$;

-- The path start_next would start next (read only: lets a worker prefetch it); NULL
-- when nothing is left.
CREATE OR REPLACE FUNCTION facescan.peek_next(p_owner text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
DECLARE
    v_lease facescan.leases;
    v_path text;
BEGIN
    SELECT * INTO v_lease FROM facescan.leases l WHERE l.owner = p_owner;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM facescan.authorize(v_lease.library, false);
    SELECT i.path INTO v_path FROM facescan.images i
    WHERE i.lease_owner = p_owner AND i.state = 'leased'
      AND i.id IS DISTINCT FROM v_lease.started_image
    ORDER BY i.priority DESC, i.attempts, i.id
    LIMIT 1;
    RETURN v_path;
END
$$;

-- Raises unless the image exists, p_owner holds it and started it (p_attempt is the
-- open attempt of p_owner's lease on that image, NULL if none); returns p_attempt.
CREATE OR REPLACE FUNCTION facescan.check_started(
    p_image_id bigint, p_state facescan.image_state, p_lease_owner text, p_owner text,
    p_attempt bigint
) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF p_state IS NULL THEN
        RAISE EXCEPTION 'unknown image %', p_image_id USING ERRCODE = 'FS004';
    END IF;
    IF p_state <> 'leased' OR p_lease_owner IS DISTINCT FROM p_owner THEN
        RAISE EXCEPTION 'lease lost: image % is % (lease %), not leased to %',
            p_image_id, p_state, coalesce(p_lease_owner, 'none'), p_owner
            USING ERRCODE = 'FS001';
    END IF;
    IF p_attempt IS NULL THEN
        RAISE EXCEPTION 'image % was never started under lease %', p_image_id, p_owner
            USING ERRCODE = 'FS002';
    END IF;
    RETURN p_attempt;
END
$$;

-- The open attempt of the image; raises unless p_owner holds the image and started it.
CREATE OR REPLACE FUNCTION facescan.started_attempt(
    p_image facescan.images, p_image_id bigint, p_owner text
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt bigint;
BEGIN
    SELECT l.started_attempt INTO v_attempt FROM facescan.leases l
    WHERE l.owner = p_owner AND l.started_image = p_image_id;
    RETURN facescan.check_started(p_image_id, p_image.state, p_image.lease_owner, p_owner,
                                  v_attempt);
END
$$;

-- In-process cascade: the detector ran out of (GPU) memory at this step and goes on at
-- the next one without leaving the process. Closes the attempt as failed (oom) and opens
-- one at the next step. No row when the cascade has no further step.
CREATE OR REPLACE FUNCTION facescan.step_down(p_image_id bigint, p_owner text, p_error text)
RETURNS TABLE (step smallint, model text, scale real, attempt_id bigint)
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_column
DECLARE
    v_image facescan.images;
    v_lib facescan.libraries;
    v_started bigint;
    v_attempt bigint;
BEGIN
    SELECT * INTO v_image FROM facescan.images WHERE id = p_image_id FOR UPDATE;
    IF FOUND THEN
        PERFORM facescan.authorize(v_image.library, false);
    END IF;
    v_started := facescan.started_attempt(v_image, p_image_id, p_owner);
    SELECT * INTO v_lib FROM facescan.libraries l WHERE l.name = v_image.library;
    IF v_image.step + 1 >= cardinality(v_lib.cascade_models) THEN
        RETURN;
    END IF;
    UPDATE facescan.attempts
    SET finished_at = now(), outcome = 'failed', error_type = 'oom', error = p_error
    WHERE id = v_started;
    INSERT INTO facescan.failures AS f (image_id, attempts, error_type, last_error,
        original_width, original_height, file_bytes, last_scale, last_model, next_retry_at)
    VALUES (v_image.id, 1, 'oom', p_error, v_image.width, v_image.height, v_image.file_bytes,
        v_lib.cascade_scales[v_image.step + 1], v_lib.cascade_models[v_image.step + 1], now())
    ON CONFLICT (image_id) DO UPDATE SET
        attempts = f.attempts + 1, error_type = 'oom', last_error = EXCLUDED.last_error,
        last_scale = EXCLUDED.last_scale, last_model = EXCLUDED.last_model,
        last_failure_at = now(), next_retry_at = now();
    INSERT INTO facescan.attempts (image_id, library, worker, step, model, scale)
    VALUES (v_image.id, v_image.library, p_owner, v_image.step + 1,
            v_lib.cascade_models[v_image.step + 2], v_lib.cascade_scales[v_image.step + 2])
    RETURNING id INTO v_attempt;
    UPDATE facescan.leases SET started_attempt = v_attempt WHERE owner = p_owner;
    UPDATE facescan.images SET step = v_image.step + 1 WHERE id = p_image_id;
    RETURN QUERY SELECT (v_image.step + 1)::smallint, v_lib.cascade_models[v_image.step + 2],
        v_lib.cascade_scales[v_image.step + 2], v_attempt;
END
$$;

-- Commits the result of an image: detection row and faces replaced, failure row cleared,
-- attempt closed, image done. Refused (FS001) unless p_owner still holds the image.
-- p_faces: [{"top", "right", "bottom", "left", "score", "landmarks": [x, y, ...],
--            "embedding": [128 or 512 numbers]}], boxes in original pixels; a video's
--            faces also "frame_ms" (their frame's timestamp) and "track".
-- p_frames: a video's sampled frames (timestamps in ms), all committed at once; NULL
-- for a photo.
-- True when committed now, false when it had landed already (a retried commit).
CREATE OR REPLACE FUNCTION facescan.commit_result(
    p_image_id bigint,
    p_owner text,
    p_max_dimension integer,
    p_original_width integer,
    p_original_height integer,
    p_duration_ms integer,
    p_faces jsonb,
    p_frames integer[] DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_library text;
    v_state facescan.image_state;
    v_lease_owner text;
    v_error_type facescan.error_type;
    v_face_count integer;
    v_started bigint;
    v_model text;
    v_scale real;
    v_step smallint;
    v_degraded boolean;
    v_faces integer;
BEGIN
    -- the image (locked), its lease's open attempt and that attempt's step, in one read
    SELECT i.library, i.state, i.lease_owner, i.error_type, i.face_count, l.started_attempt,
           a.model, a.scale, a.step,
           a.model <> lib.cascade_models[1] OR a.scale < lib.cascade_scales[1]
    INTO v_library, v_state, v_lease_owner, v_error_type, v_face_count, v_started,
         v_model, v_scale, v_step, v_degraded
    FROM facescan.images i
    LEFT JOIN facescan.leases l ON l.owner = p_owner AND l.started_image = i.id
    LEFT JOIN facescan.attempts a ON a.id = l.started_attempt
    LEFT JOIN facescan.libraries lib ON lib.name = a.library
    WHERE i.id = p_image_id
    FOR UPDATE OF i;
    IF v_library IS NOT NULL THEN
        PERFORM facescan.authorize(v_library, false);
    END IF;
    IF v_state = 'done' THEN
        IF EXISTS (SELECT 1 FROM facescan.detections d
                   WHERE d.image_id = p_image_id AND d.worker = p_owner) THEN
            RETURN false;  -- a retry of our own commit whose reply was lost: it landed
        END IF;
    END IF;
    PERFORM facescan.check_started(p_image_id, v_state, v_lease_owner, p_owner, v_started);
    IF jsonb_typeof(p_faces) IS DISTINCT FROM 'array' THEN
        v_faces := -1;
    ELSE
        v_faces := jsonb_array_length(p_faces);
    END IF;
    IF v_faces > 0 THEN  -- (no face: nothing to check, nothing to insert)
        IF EXISTS (
            SELECT 1 FROM jsonb_array_elements(p_faces) AS e (face)
            WHERE jsonb_typeof(face) IS DISTINCT FROM 'object'
               OR NOT face ?& ARRAY['top', 'right', 'bottom', 'left']
               OR jsonb_typeof(face -> 'top') IS DISTINCT FROM 'number'
               OR jsonb_typeof(face -> 'right') IS DISTINCT FROM 'number'
               OR jsonb_typeof(face -> 'bottom') IS DISTINCT FROM 'number'
               OR jsonb_typeof(face -> 'left') IS DISTINCT FROM 'number'
               OR (face ->> 'left')::numeric > (face ->> 'right')::numeric
               OR (face ->> 'top')::numeric > (face ->> 'bottom')::numeric
               OR (jsonb_typeof(face -> 'embedding') = 'array'
                   AND jsonb_array_length(face -> 'embedding') NOT IN (128, 512))
               OR coalesce(jsonb_typeof(face -> 'embedding'), 'null') NOT IN ('array', 'null')
               OR coalesce(jsonb_typeof(face -> 'frame_ms'), 'null') NOT IN ('number', 'null')
               OR coalesce(jsonb_typeof(face -> 'track'), 'null') NOT IN ('number', 'null')
        ) THEN
            v_faces := -1;
        END IF;
    END IF;
    IF v_faces < 0 THEN
        RAISE EXCEPTION 'faces of image % must be a JSON array of boxes (top <= bottom, '
            'left <= right) whose embeddings, if any, have 128 (dlib) or 512 (ArcFace) '
            'numbers', p_image_id USING ERRCODE = 'FS005';
    END IF;
    IF v_face_count > 0 THEN  -- faces of an earlier result (a rescan) are replaced
        DELETE FROM facescan.faces WHERE image_id = p_image_id;
    END IF;
    IF v_faces > 0 THEN
        INSERT INTO facescan.faces (image_id, box_top, box_right, box_bottom, box_left,
                                    score, landmarks, model, embedding_dlib, embedding_arcface,
                                    frame_ms, track)
        SELECT p_image_id, f.top, f."right", f.bottom, f."left", f.score, f.landmarks,
               v_model,
               CASE WHEN jsonb_typeof(f.embedding) = 'array'
                         AND jsonb_array_length(f.embedding) = 128
                    THEN f.embedding::text::vector END,
               CASE WHEN jsonb_typeof(f.embedding) = 'array'
                         AND jsonb_array_length(f.embedding) = 512
                    THEN f.embedding::text::vector END,
               f.frame_ms, f.track
        FROM jsonb_to_recordset(p_faces) AS f (
            top integer, "right" integer, bottom integer, "left" integer, score real,
            landmarks real[], embedding jsonb, frame_ms integer, track smallint);
    END IF;

    INSERT INTO facescan.detections (image_id, model, scale, max_dimension, step, face_count,
        original_width, original_height, degraded, duration_ms, worker, frames)
    VALUES (p_image_id, v_model, v_scale, p_max_dimension, v_step,
        v_faces, p_original_width, p_original_height, v_degraded, p_duration_ms, p_owner,
        p_frames)
    ON CONFLICT (image_id) DO UPDATE SET
        model = EXCLUDED.model, scale = EXCLUDED.scale, max_dimension = EXCLUDED.max_dimension,
        step = EXCLUDED.step, face_count = EXCLUDED.face_count,
        original_width = EXCLUDED.original_width, original_height = EXCLUDED.original_height,
        degraded = EXCLUDED.degraded, duration_ms = EXCLUDED.duration_ms,
        worker = EXCLUDED.worker, detected_at = now(), frames = EXCLUDED.frames;
    IF v_error_type IS NOT NULL THEN
        DELETE FROM facescan.failures WHERE image_id = p_image_id;
    END IF;
    UPDATE facescan.attempts SET finished_at = now(), outcome = 'done' WHERE id = v_started;
    UPDATE facescan.images
    SET state = 'done', lease_owner = NULL, error_type = NULL, unavailable_count = 0,
        degraded = v_degraded, face_count = v_faces, updated_at = now()
    WHERE id = p_image_id;
    RETURN true;
END
$$;

-- commit_result, as a statement of its own (the named query complete_image).
CREATE OR REPLACE FUNCTION facescan.complete_image(
    p_image_id bigint,
    p_owner text,
    p_max_dimension integer,
    p_original_width integer,
    p_original_height integer,
    p_duration_ms integer,
    p_faces jsonb,
    p_frames integer[] DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM facescan.commit_result(p_image_id, p_owner, p_max_dimension, p_original_width,
        p_original_height, p_duration_ms, p_faces, p_frames);
END
$$;

-- complete_image, then start_next in the same transaction: the detector's hot path
-- (one round trip and one commit per image).
CREATE OR REPLACE FUNCTION facescan.complete_and_start_next(
    p_image_id bigint,
    p_owner text,
    p_max_dimension integer,
    p_original_width integer,
    p_original_height integer,
    p_duration_ms integer,
    p_faces jsonb,
    p_frames integer[] DEFAULT NULL
) RETURNS TABLE (
    image_id bigint, path text, width integer, height integer, file_bytes bigint,
    step smallint, model text, scale real, attempt_id bigint, max_dimension integer,
    kind facescan.media_kind, duration_ms integer, frames_per_video integer,
    min_frame_spacing_s real
)
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    -- (commit_result checks the image's library; the lease's images are all of it)
    IF facescan.commit_result(p_image_id, p_owner, p_max_dimension, p_original_width,
                              p_original_height, p_duration_ms, p_faces, p_frames) THEN
        RETURN QUERY SELECT * FROM facescan.start_unstarted(p_owner);
    ELSE  -- a retried commit: the next image may have been started by the first try
        RETURN QUERY SELECT * FROM facescan.start_next(p_owner);
    END IF;
END
$$;

-- Charges one failure to a started image and moves it on, by the failure type's policy:
--   unavailable          not the image's fault: back to pending after a delay, no attempt
--                        charged, no failure row (so an outage cannot flood failures);
--                        but counted while other images of the library succeed (one of
--                        the last 20 finished attempts is done), and once counted more
--                        than unavailable_grace times charged as anything else, below
--                        (a file that always fails to read goes dead, reason kept)
--   oom, timeout         next cascade step, runnable now, not charged (unless last step)
--   decode               charged; dead after decode_max_attempts
--   missing              charged, at least missing_backoff_s between attempts
--   anything else        charged, backoff base x multiplier^(n-1) capped; dead at max
CREATE OR REPLACE FUNCTION facescan.charge_failure(
    p_image facescan.images,
    p_attempt bigint,
    p_error_type facescan.error_type,
    p_error text,
    p_original_width integer DEFAULT NULL,
    p_original_height integer DEFAULT NULL,
    p_file_bytes bigint DEFAULT NULL
) RETURNS TABLE (state facescan.image_state, step smallint, next_attempt_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_lib facescan.libraries;
    v_attempt facescan.attempts;
    v_state facescan.image_state := 'pending';
    v_step smallint := p_image.step;
    v_attempts smallint := p_image.attempts;
    v_unavailable smallint := p_image.unavailable_count;
    v_charged boolean := true;
    v_limit integer;
    v_delay double precision := 0;
BEGIN
    SELECT * INTO v_lib FROM facescan.libraries l WHERE l.name = p_image.library;
    UPDATE facescan.attempts a
    SET finished_at = now(), outcome = 'failed', error_type = p_error_type, error = p_error
    WHERE a.id = p_attempt
    RETURNING * INTO v_attempt;

    IF p_error_type = 'unavailable' AND EXISTS (
        SELECT 1 FROM (
            SELECT a.outcome FROM facescan.attempts a  -- walks attempts_library_recent
            WHERE a.library = p_image.library AND a.finished_at IS NOT NULL
            ORDER BY a.id DESC
            LIMIT 20
        ) AS recent
        WHERE recent.outcome = 'done'
    ) THEN
        v_unavailable := least(v_unavailable + 1, 32767);
    END IF;

    IF p_error_type = 'unavailable' AND v_unavailable <= v_lib.unavailable_grace THEN
        v_charged := false;
        v_delay := v_lib.unavailable_delay_s;
    ELSIF p_error_type IN ('oom', 'timeout')
          AND p_image.step + 1 < cardinality(v_lib.cascade_models) THEN
        v_step := p_image.step + 1;
    ELSE
        v_attempts := p_image.attempts + 1;
        v_limit := CASE WHEN p_error_type = 'decode'
                        THEN least(v_lib.decode_max_attempts, v_lib.max_attempts)
                        ELSE v_lib.max_attempts END;
        IF v_attempts >= v_limit THEN
            v_state := 'dead';
        ELSE
            v_delay := least(v_lib.backoff_cap_s,
                             v_lib.backoff_base_s * v_lib.backoff_multiplier ^ (v_attempts - 1));
            IF p_error_type = 'missing' THEN
                v_delay := greatest(v_delay, v_lib.missing_backoff_s);
            END IF;
        END IF;
    END IF;

    UPDATE facescan.images i
    SET state = v_state, step = v_step, attempts = v_attempts,
        error_type = CASE WHEN v_charged THEN p_error_type ELSE i.error_type END,
        unavailable_count = v_unavailable,
        next_attempt_at = now() + make_interval(secs => v_delay),
        lease_owner = NULL, updated_at = now()
    WHERE i.id = p_image.id;

    IF v_charged THEN
        INSERT INTO facescan.failures AS f (image_id, attempts, error_type, last_error,
            original_width, original_height, file_bytes, last_scale, last_model,
            next_retry_at, dead)
        VALUES (p_image.id, 1, p_error_type, p_error,
            coalesce(p_original_width, p_image.width), coalesce(p_original_height, p_image.height),
            coalesce(p_file_bytes, p_image.file_bytes), v_attempt.scale, v_attempt.model,
            CASE WHEN v_state = 'dead' THEN NULL
                 ELSE now() + make_interval(secs => v_delay) END,
            v_state = 'dead')
        ON CONFLICT (image_id) DO UPDATE SET
            attempts = f.attempts + 1, error_type = EXCLUDED.error_type,
            last_error = EXCLUDED.last_error,
            original_width = coalesce(EXCLUDED.original_width, f.original_width),
            original_height = coalesce(EXCLUDED.original_height, f.original_height),
            file_bytes = coalesce(EXCLUDED.file_bytes, f.file_bytes),
            last_scale = EXCLUDED.last_scale, last_model = EXCLUDED.last_model,
            last_failure_at = now(), next_retry_at = EXCLUDED.next_retry_at,
            dead = EXCLUDED.dead;
    END IF;
    RETURN QUERY SELECT v_state, v_step, now() + make_interval(secs => v_delay);
END
$$;

-- The lease holder reports a typed failure for the image it started.
CREATE OR REPLACE FUNCTION facescan.fail_image(
    p_image_id bigint,
    p_owner text,
    p_error_type facescan.error_type,
    p_error text,
    p_original_width integer DEFAULT NULL,
    p_original_height integer DEFAULT NULL,
    p_file_bytes bigint DEFAULT NULL
) RETURNS TABLE (state facescan.image_state, step smallint, next_attempt_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_image facescan.images;
BEGIN
    SELECT * INTO v_image FROM facescan.images WHERE id = p_image_id FOR UPDATE;
    IF FOUND THEN
        PERFORM facescan.authorize(v_image.library, false);
    END IF;
    RETURN QUERY SELECT * FROM facescan.charge_failure(v_image,
        facescan.started_attempt(v_image, p_image_id, p_owner), p_error_type, p_error,
        p_original_width, p_original_height, p_file_bytes);
END
$$;

-- Ends a lease. The image it had started (at most one) is charged p_charge (oom when
-- the pod was OOMKilled, crash when it died without a reason) or, with p_charge NULL
-- (preemption, eviction), released uncharged. Unstarted images return to pending
-- untouched. Returns the charged image (NULL if none) and how many were released.
CREATE OR REPLACE FUNCTION facescan.release_lease(
    p_owner text,
    p_charge facescan.error_type DEFAULT NULL,
    p_error text DEFAULT NULL
) RETURNS TABLE (charged_image bigint, released integer)
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_lease facescan.leases;
    v_image facescan.images;
    v_charged bigint;
    v_released integer;
BEGIN
    SELECT * INTO v_lease FROM facescan.leases WHERE owner = p_owner FOR UPDATE;
    IF NOT FOUND THEN  -- no lease: no image is leased to p_owner either
        RETURN QUERY SELECT NULL::bigint, 0;
        RETURN;
    END IF;
    PERFORM facescan.authorize(v_lease.library, false);
    SELECT * INTO v_image FROM facescan.images
    WHERE id = v_lease.started_image AND lease_owner = p_owner AND state = 'leased'
    FOR UPDATE;
    IF FOUND THEN
        IF p_charge IS NULL THEN
            UPDATE facescan.attempts SET finished_at = now(), outcome = 'released'
            WHERE id = v_lease.started_attempt;
        ELSE
            PERFORM facescan.charge_failure(v_image, v_lease.started_attempt, p_charge,
                coalesce(p_error, format('worker %s ended with image in progress', p_owner)));
            v_charged := v_image.id;
        END IF;
    END IF;
    UPDATE facescan.images
    SET state = 'pending', lease_owner = NULL, updated_at = now()
    WHERE lease_owner = p_owner AND state = 'leased';
    GET DIAGNOSTICS v_released = ROW_COUNT;
    DELETE FROM facescan.leases WHERE owner = p_owner;
    RETURN QUERY SELECT v_charged, v_released;
END
$$;

-- Ends every expired lease (its holder vanished): charges crash to the image each one
-- had started, returns the rest of its batch untouched.
CREATE OR REPLACE FUNCTION facescan.reclaim_expired(p_library text DEFAULT NULL)
RETURNS TABLE (owner text, charged_image bigint, released integer)
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_column
DECLARE
    v_owner text;
BEGIN
    PERFORM facescan.authorize(p_library, true);  -- NULL (every library): unrestricted only
    FOR v_owner IN
        SELECT l.owner FROM facescan.leases l
        WHERE l.expires_at < now() AND (p_library IS NULL OR l.library = p_library)
        ORDER BY l.owner
        FOR UPDATE SKIP LOCKED
    LOOP
        RETURN QUERY SELECT v_owner, r.charged_image, r.released
        FROM facescan.release_lease(v_owner, 'crash',
            'lease expired: the worker stopped heartbeating (killed or vanished)') AS r;
    END LOOP;
END
$$;

-- Requeueing ------------------------------------------------------------------------

-- Makes failing images runnable now with a fresh attempt budget: dead ones only with
-- p_only_dead, optionally only one failure type or only the given paths.
CREATE OR REPLACE FUNCTION facescan.requeue(
    p_library text,
    p_only_dead boolean DEFAULT false,
    p_error_type facescan.error_type DEFAULT NULL,
    p_paths text[] DEFAULT NULL
) RETURNS integer
LANGUAGE sql SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    WITH target AS (
        SELECT i.id FROM facescan.images i
        WHERE i.library = p_library AND i.error_type IS NOT NULL
          AND i.state IN ('pending', 'dead')
          AND (NOT p_only_dead OR i.state = 'dead')
          AND (p_error_type IS NULL OR i.error_type = p_error_type)
          AND (p_paths IS NULL OR i.path = ANY (p_paths))
        FOR UPDATE
    ), requeued AS (
        UPDATE facescan.images i
        SET state = 'pending', attempts = 0, unavailable_count = 0, next_attempt_at = now(),
            updated_at = now()
        FROM target WHERE i.id = target.id
        RETURNING i.id
    ), revived AS (
        UPDATE facescan.failures f SET dead = false, next_retry_at = now()
        FROM requeued WHERE f.image_id = requeued.id
    )
    SELECT count(*)::integer FROM requeued
$$;

-- The one way back to the first cascade step: queues these images again, runnable now,
-- with a fresh attempt budget (rescan; register_images for a file that changed).
-- Leased images are left to their worker. With p_forget the old result goes too
-- (detection, faces, failure: the file is another one now); without, it stays until the
-- new result replaces it. Returns the ids queued again.
CREATE OR REPLACE FUNCTION facescan.restart_images(p_ids bigint[], p_forget boolean)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN;
    END IF;
    WITH restarted AS (
        UPDATE facescan.images i
        SET state = 'pending', step = 0, attempts = 0, unavailable_count = 0,
            next_attempt_at = now(), updated_at = now(),
            error_type = CASE WHEN p_forget THEN NULL ELSE i.error_type END,
            degraded = CASE WHEN p_forget THEN false ELSE i.degraded END,
            face_count = CASE WHEN p_forget THEN 0 ELSE i.face_count END
        WHERE i.id = ANY (p_ids) AND i.state <> 'leased'
        RETURNING i.id
    )
    SELECT coalesce(array_agg(r.id), '{}') INTO v_ids FROM restarted AS r;
    IF p_forget AND cardinality(v_ids) > 0 THEN
        DELETE FROM facescan.faces WHERE image_id = ANY (v_ids);
        DELETE FROM facescan.detections WHERE image_id = ANY (v_ids);
        DELETE FROM facescan.failures WHERE image_id = ANY (v_ids);
    END IF;
    RETURN QUERY SELECT unnest(v_ids);
END
$$;

-- Queues done images again from the first cascade step: only degraded results (found
-- at a reduced scale or with HOG) with p_only_degraded, optionally only given paths;
-- never facescan's own images (paths beneath .facescan/: uploaded reference photos).
-- Their faces stay until the new result replaces them.
CREATE OR REPLACE FUNCTION facescan.rescan(
    p_library text,
    p_only_degraded boolean DEFAULT true,
    p_paths text[] DEFAULT NULL
) RETURNS integer
LANGUAGE sql SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT count(*)::integer FROM facescan.restart_images(ARRAY(
        SELECT i.id FROM facescan.images i
        WHERE i.library = p_library AND i.state = 'done'
          AND (NOT p_only_degraded OR i.degraded)
          AND (p_paths IS NULL OR i.path = ANY (p_paths))
          AND i.path NOT LIKE '.facescan/%'  -- facescan's own images: no file to redo
    ), false)
$$;

-- Reading the queue ---------------------------------------------------------------------

-- Image and face counts of a library by state, failure type, degradation and whether
-- missing, from the counters (O(groups), not O(images)).
CREATE OR REPLACE FUNCTION facescan.status_counts(p_library text)
RETURNS TABLE (
    state facescan.image_state, error_type facescan.error_type, degraded boolean,
    missing boolean, images bigint, faces bigint
)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT c.state, c.error_type, c.degraded, c.missing, sum(c.images)::bigint,
           sum(c.faces)::bigint
    FROM facescan.image_counts c
    WHERE c.library = p_library
    GROUP BY c.state, c.error_type, c.degraded, c.missing
    HAVING sum(c.images) <> 0 OR sum(c.faces) <> 0
$$;

-- A library's videos (of the images status_counts counts) and their faces, by state and
-- whether missing: O(videos), through the partial index images_videos.
CREATE OR REPLACE FUNCTION facescan.video_counts(p_library text)
RETURNS TABLE (state facescan.image_state, missing boolean, videos bigint, faces bigint)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT i.state, i.missing_since IS NOT NULL, count(*)::bigint, sum(i.face_count)::bigint
    FROM facescan.images i
    WHERE i.library = p_library AND i.kind = 'video'
    GROUP BY 1, 2
$$;

-- Images runnable now, by (cascade step, size class), each group counted up to p_cap:
-- what the planner needs to decide which batches to claim.
CREATE OR REPLACE FUNCTION facescan.runnable_groups(p_library text, p_cap integer)
RETURNS TABLE (step smallint, size_class smallint, runnable integer)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT g.step, g.size_class, r.runnable
    FROM (
        SELECT c.step, c.size_class FROM facescan.image_counts c
        WHERE c.library = p_library AND c.state = 'pending' AND NOT c.missing
        GROUP BY c.step, c.size_class
        HAVING sum(c.images) > 0
    ) AS g
    CROSS JOIN LATERAL (
        SELECT count(*)::integer AS runnable FROM (
            SELECT 1 FROM facescan.images i
            WHERE i.library = p_library AND i.state = 'pending' AND i.missing_since IS NULL
              AND i.step = g.step AND i.size_class = g.size_class
              AND i.next_attempt_at <= now()
            ORDER BY i.priority DESC, i.attempts, i.id  -- the claim order: walks images_runnable
            LIMIT p_cap
        ) AS capped
    ) AS r
    WHERE r.runnable > 0
    ORDER BY g.step, g.size_class
$$;

-- Outcomes of the last p_window finished attempts of a library after attempt p_after_id:
-- what the circuit breaker reads to tell an outage (unavailable) from bad images.
CREATE OR REPLACE FUNCTION facescan.recent_outcomes(
    p_library text, p_window integer, p_after_id bigint DEFAULT 0
) RETURNS TABLE (finished integer, unavailable integer, failed integer, last_id bigint)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT count(*)::integer,
           (count(*) FILTER (WHERE a.error_type = 'unavailable'))::integer,
           (count(*) FILTER (WHERE a.outcome = 'failed'))::integer,
           coalesce(max(a.id), p_after_id)
    FROM (
        SELECT id, outcome, error_type FROM facescan.attempts
        WHERE library = p_library AND finished_at IS NOT NULL AND id > p_after_id
        ORDER BY id DESC
        LIMIT p_window
    ) AS a
$$;

-- Attempts of a library that finished in [p_since, p_until), by outcome and failure
-- type: what the operator's attempts counter adds each tick, p_since and p_until being
-- the clocks attempt_clock gave at the previous tick and this one. Only attempts from
-- p_from_id on are read (the previous tick's attempt_clock: every earlier attempt had
-- finished by then). An attempt whose commit straddles a tick's clock can be missed.
CREATE OR REPLACE FUNCTION facescan.attempt_outcomes(
    p_library text, p_since timestamptz, p_until timestamptz, p_from_id bigint
) RETURNS TABLE (outcome text, error_type text, attempts bigint)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT a.outcome::text, a.error_type::text, count(*)::bigint
    FROM facescan.attempts a
    WHERE a.library = p_library AND a.id >= p_from_id
      AND a.finished_at >= p_since AND a.finished_at < p_until
    GROUP BY 1, 2
    ORDER BY 1, 2
$$;

-- The clock and the lowest attempt id of the library that may still finish (the open
-- attempt of a lease, whose started attempts are the only open ones; else the next id).
CREATE OR REPLACE FUNCTION facescan.attempt_clock(p_library text)
RETURNS TABLE (now timestamptz, from_id bigint)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT now(), coalesce(
        (SELECT min(a.id) FROM facescan.leases l
         JOIN facescan.attempts a ON a.id = l.started_attempt AND a.finished_at IS NULL
         WHERE l.library = p_library),
        (SELECT max(a.id) + 1 FROM facescan.attempts a WHERE a.library = p_library),
        0)
$$;

-- The active leases of a library with how many images each still holds.
CREATE OR REPLACE FUNCTION facescan.leases_of(p_library text)
RETURNS TABLE (
    owner text, step smallint, size_class smallint, claimed_at timestamptz,
    expires_at timestamptz, images integer
)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT l.owner, l.step, l.size_class, l.claimed_at, l.expires_at,
           (SELECT count(*) FROM facescan.images i
            WHERE i.lease_owner = l.owner AND i.state = 'leased')::integer
    FROM facescan.leases l
    WHERE l.library = p_library
    ORDER BY l.claimed_at, l.owner
$$;

-- The libraries the session's role may use, by name (every one when unrestricted).
CREATE OR REPLACE FUNCTION facescan.visible_libraries() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT lib.name FROM facescan.libraries lib
    WHERE facescan.unrestricted()
       OR EXISTS (SELECT 1 FROM facescan.library_roles r
                  WHERE r.role = session_user AND r.library = lib.name)
    ORDER BY lib.name
$$;

-- The failing images of a library, one row each, by path.
CREATE OR REPLACE FUNCTION facescan.list_failures(
    p_library text, p_error_type facescan.error_type, p_dead_only boolean, p_limit integer
) RETURNS TABLE (
    path text, error_type facescan.error_type, attempts integer, last_error text,
    next_retry_at timestamptz, dead boolean, last_model text, last_scale real,
    last_failure_at timestamptz
)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT i.path, f.error_type, f.attempts, f.last_error, f.next_retry_at, f.dead,
           f.last_model, f.last_scale, f.last_failure_at
    FROM facescan.failures f
    JOIN facescan.images i ON i.id = f.image_id
    WHERE i.library = p_library
      AND (p_error_type IS NULL OR f.error_type = p_error_type)
      AND (NOT p_dead_only OR f.dead)
    ORDER BY i.path
    LIMIT p_limit
$$;

-- One registered image of a library with its detection summary; no row if none.
CREATE OR REPLACE FUNCTION facescan.image_by_path(p_library text, p_path text)
RETURNS TABLE (
    id bigint, path text, state facescan.image_state, step smallint, attempts smallint,
    error_type facescan.error_type, degraded boolean, face_count integer, width integer,
    height integer, model text, scale real, original_width integer, original_height integer,
    kind facescan.media_kind, duration_ms integer, frames integer[]
)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT i.id, i.path, i.state, i.step, i.attempts, i.error_type, i.degraded, i.face_count,
           i.width, i.height, d.model, d.scale, d.original_width, d.original_height, i.kind,
           i.duration_ms, d.frames
    FROM facescan.images i
    LEFT JOIN facescan.detections d ON d.image_id = i.id
    WHERE i.library = p_library AND i.path = p_path
$$;

-- The committed faces of one image, boxes in original pixels (a video's with their
-- frame's timestamp and their track), in `facescan faces` order.
CREATE OR REPLACE FUNCTION facescan.faces_of_image(p_image_id bigint)
RETURNS TABLE (
    box_top integer, box_right integer, box_bottom integer, box_left integer, score real,
    model text, scale real, landmarks real[], id bigint, frame_ms integer, track smallint
)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(i.library, true) FROM facescan.images i WHERE i.id = p_image_id;
    SELECT f.box_top, f.box_right, f.box_bottom, f.box_left, f.score, f.model, d.scale,
           f.landmarks, f.id, f.frame_ms, f.track
    FROM facescan.faces f
    JOIN facescan.detections d ON d.image_id = f.image_id
    WHERE f.image_id = p_image_id
    ORDER BY f.box_left, f.box_top, f.id
$$;

-- (path, face count) of every done image of a library.
CREATE OR REPLACE FUNCTION facescan.faces_per_image(p_library text)
RETURNS TABLE (path text, face_count integer)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT i.path, i.face_count FROM facescan.images i
    WHERE i.library = p_library AND i.state = 'done'
    ORDER BY i.path
$$;

-- The timestamps (ms) of the sampled frames where each done video of a library has faces.
CREATE OR REPLACE FUNCTION facescan.video_face_frames(p_library text)
RETURNS TABLE (path text, frames integer[])
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT facescan.authorize(p_library, true);
    SELECT i.path, ARRAY(SELECT DISTINCT f.frame_ms FROM facescan.faces f
                         WHERE f.image_id = i.id AND f.frame_ms IS NOT NULL ORDER BY 1)
    FROM facescan.images i
    WHERE i.library = p_library AND i.state = 'done' AND i.kind = 'video'
    ORDER BY i.path
$$;

-- People, as the operator sees them -------------------------------------------------------

-- The people of a library and its faces by assignment: assigned (matched, to a person),
-- pending (a suggestion for a person) and unassigned (nobody's, or not considered by
-- matching yet). The faces of one track of a video (one person across its frames)
-- count once, as their best assignment: a person counts once per video, not once per
-- frame. For a FaceScan's status: the operator reads it once per people Job.
CREATE OR REPLACE FUNCTION facescan.people_counts(p_library text)
RETURNS TABLE (people bigint, assigned bigint, pending bigint, unassigned bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
BEGIN
    PERFORM facescan.authorize(p_library, true);
    RETURN QUERY
    SELECT (SELECT count(*) FROM facescan.people p WHERE p.library = p_library),
           count(*) FILTER (WHERE u.matched),
           count(*) FILTER (WHERE u.pending AND NOT u.matched),
           count(*) FILTER (WHERE NOT u.matched AND NOT u.pending)
    FROM (
        SELECT coalesce(bool_or(fp.status = 'matched'), false) AS matched,
               coalesce(bool_or(fp.status = 'pending'), false) AS pending
        FROM facescan.faces f
        JOIN facescan.images i ON i.id = f.image_id
        LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
        WHERE i.library = p_library
        -- one unit per track of a video, one per face otherwise (face ids are positive)
        GROUP BY f.image_id, coalesce(f.track::bigint, -f.id)
    ) AS u;
END
$$;

-- Sets a library's matching distances (NULL keeps the current value; a row with the
-- defaults is made first): a FaceScan's spec.people, written by the operator.
CREATE OR REPLACE FUNCTION facescan.set_people_settings(
    p_library text,
    p_dlib_match real DEFAULT NULL,
    p_dlib_auto_tag real DEFAULT NULL,
    p_arcface_match real DEFAULT NULL,
    p_arcface_auto_tag real DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM facescan.authorize(p_library, true);
    INSERT INTO facescan.people_settings (library) VALUES (p_library)
    ON CONFLICT (library) DO NOTHING;
    UPDATE facescan.people_settings SET
        dlib_match_distance = coalesce(p_dlib_match, dlib_match_distance),
        dlib_auto_tag_distance = coalesce(p_dlib_auto_tag, dlib_auto_tag_distance),
        arcface_match_distance = coalesce(p_arcface_match, arcface_match_distance),
        arcface_auto_tag_distance = coalesce(p_arcface_auto_tag, arcface_auto_tag_distance),
        updated_at = now()
    WHERE library = p_library;
END
$$;

-- Search path of the SECURITY DEFINER functions -----------------------------------------

-- Each runs with pg_catalog first, then the schema of pgvector (its vector type) and
-- pg_temp last, so that no object a caller creates (a temporary table, type or
-- function) can stand in for one the function means while it runs as the owner.
-- (ALTER after CREATE OR REPLACE: the schema of pgvector is known only here.)
DO $$
DECLARE
    v_function regprocedure;
    v_path text := concat_ws(', ', 'pg_catalog',
        (SELECT quote_ident(n.nspname) FROM pg_extension e
         JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'),
        'pg_temp');
BEGIN
    FOR v_function IN
        SELECT p.oid FROM pg_proc p
        WHERE p.pronamespace = 'facescan'::regnamespace AND p.prosecdef
        ORDER BY p.oid
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %s', v_function, v_path);
    END LOOP;
END
$$;

