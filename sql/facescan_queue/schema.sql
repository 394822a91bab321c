-- facescan: the current schema of the queue, in one file.
--
-- This file and migrations/*.sql applied in order must produce the same database
-- (tests/integration/test_migrations.py compares them). Change both in the same commit.
-- Tables, types and views live here; the functions and triggers of the state machine
-- live in functions.sql, which `facescan db migrate` re-applies after every migration
-- (CREATE OR REPLACE), so their code always matches the installed facescan.
--
-- Everything lives in the schema "facescan". pgvector provides the embedding columns.
-- Requires PostgreSQL >= 15 (UNIQUE NULLS NOT DISTINCT) with the pgvector extension.

CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA facescan;

CREATE TABLE facescan.schema_version (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- States of an image and the only moves between them (each made by one function below):
--   pending -> leased     claim_batch
--   leased  -> done       complete_image   (the lease holder, after start_next)
--   leased  -> pending    fail_image (retry later or at the next cascade step),
--                         release_lease / reclaim_expired (unstarted images, untouched)
--   leased  -> dead       fail_image (attempts exhausted)
--   dead    -> pending    requeue
--   pending -> pending    requeue (retry now instead of after the backoff)
--   done    -> pending    rescan
--   pending, done, dead -> pending   register_images, when the file changed (restart_images)
-- guard_image_transition() refuses every other move, whoever makes it.
-- Apart from the state, an image whose file a registration found gone is *missing*
-- (images.missing_since): never claimed, counted apart, its result kept, unmarked when
-- a registration sees the file again. A leased image is never marked missing.
CREATE TYPE facescan.image_state AS ENUM ('pending', 'leased', 'done', 'dead');

-- The closed set of failure reasons (facescan_queue.types.ErrorType mirrors it).
CREATE TYPE facescan.error_type AS ENUM (
    'oom', 'timeout', 'decode', 'missing', 'permission', 'crash', 'unavailable', 'internal'
);

CREATE TYPE facescan.attempt_outcome AS ENUM ('done', 'failed', 'released');

-- A photo, or a video (migration 9): one queue item whose result is the faces of a few
-- sampled frames, each with its frame's timestamp.
CREATE TYPE facescan.media_kind AS ENUM ('image', 'video');

-- A library: one photo collection (one FaceScan on a cluster), with its cascade and
-- retry policy. Every image belongs to one.
CREATE TABLE facescan.libraries (
    name text PRIMARY KEY CHECK (name <> ''),
    cascade_models text[] NOT NULL DEFAULT '{cnn,cnn,cnn,cnn,cnn,hog}',
    cascade_scales real[] NOT NULL DEFAULT '{1.0,0.75,0.5,0.33,0.25,1.0}',
    backoff_base_s integer NOT NULL DEFAULT 60 CHECK (backoff_base_s > 0),
    backoff_multiplier real NOT NULL DEFAULT 2 CHECK (backoff_multiplier >= 1),
    backoff_cap_s integer NOT NULL DEFAULT 3600 CHECK (backoff_cap_s >= backoff_base_s),
    max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    decode_max_attempts integer NOT NULL DEFAULT 2 CHECK (decode_max_attempts >= 1),
    missing_backoff_s integer NOT NULL DEFAULT 3600 CHECK (missing_backoff_s > 0),
    unavailable_delay_s integer NOT NULL DEFAULT 60 CHECK (unavailable_delay_s > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- uncharged `unavailable` failures of one image (counted only while other images of
    -- the library succeed) before further ones are charged like any other failure
    unavailable_grace integer NOT NULL DEFAULT 5 CHECK (unavailable_grace >= 0),
    -- the long side images are capped at before detection (0: no cap); start_next
    -- returns it with each image
    max_dimension integer NOT NULL DEFAULT 1280 CHECK (max_dimension >= 0),
    -- frames sampled per video, evenly over its duration (migration 9), fewer where they
    -- would be closer than min_frame_spacing_s seconds
    frames_per_video integer NOT NULL DEFAULT 5 CHECK (frames_per_video BETWEEN 1 AND 100),
    min_frame_spacing_s real NOT NULL DEFAULT 0 CHECK (min_frame_spacing_s >= 0),
    CHECK (cardinality(cascade_models) >= 1
           AND cardinality(cascade_models) = cardinality(cascade_scales)
           AND cascade_models <@ '{hog,cnn,insightface}'::text[]
           AND 0 < ALL (cascade_scales) AND 1 >= ALL (cascade_scales))
);

-- Size classes group images of similar original megapixels so that small images run
-- in small pods: 0 <= 2 MP, 1 <= 8 MP, 2 <= 16 MP, 3 <= 32 MP, 4 larger, 5 unknown.
CREATE FUNCTION facescan.size_class(width integer, height integer) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN width IS NULL OR height IS NULL THEN 5
        WHEN width::bigint * height <= 2000000 THEN 0
        WHEN width::bigint * height <= 8000000 THEN 1
        WHEN width::bigint * height <= 16000000 THEN 2
        WHEN width::bigint * height <= 32000000 THEN 3
        ELSE 4
    END::smallint
$$;

-- A worker's hold on a batch. The owner names the worker (a Job, a subprocess).
CREATE TABLE facescan.leases (
    owner text PRIMARY KEY CHECK (owner <> ''),
    library text NOT NULL REFERENCES facescan.libraries (name) ON DELETE CASCADE,
    step smallint NOT NULL,
    size_class smallint NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    heartbeat_at timestamptz,
    -- the image in progress and its open attempt (at most one per lease; stale once that
    -- image is no longer leased to this owner)
    started_image bigint,
    started_attempt bigint
) WITH (fillfactor = 70);
CREATE INDEX leases_expiry ON facescan.leases (expires_at);

CREATE TABLE facescan.images (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    library text NOT NULL REFERENCES facescan.libraries (name) ON DELETE CASCADE,
    -- relative to the library root; never absolute, never climbing out of it
    path text NOT NULL CONSTRAINT images_path_relative
        CHECK (path <> '' AND path !~ '^/' AND path !~ '(^|/)\.\.(/|$)'),
    width integer CHECK (width > 0),
    height integer CHECK (height > 0),
    file_bytes bigint CHECK (file_bytes >= 0),
    -- facescan.size_class(width, height), stored by register_images (the only writer of
    -- width and height); not a generated column, whose expression every UPDATE would set up
    size_class smallint NOT NULL,
    priority smallint NOT NULL DEFAULT 0,
    state facescan.image_state NOT NULL DEFAULT 'pending',
    step smallint NOT NULL DEFAULT 0 CHECK (step >= 0),
    -- attempts charged against the library's max_attempts (step-downs are not charged)
    attempts smallint NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- the last failure's type while the image is failing; NULL when fresh or done
    error_type facescan.error_type,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner text REFERENCES facescan.leases (owner),
    degraded boolean NOT NULL DEFAULT false,
    face_count integer NOT NULL DEFAULT 0,
    registered_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- `unavailable` failures counted against the library's unavailable_grace since the
    -- image last succeeded or was requeued
    unavailable_count smallint NOT NULL DEFAULT 0,
    -- the file's modification time as last registered (NULL: unknown, e.g. registered
    -- before facescan kept it): with file_bytes, how a registration tells a changed file
    file_mtime timestamptz,
    -- when a registration that walked the whole library root found the file gone; NULL
    -- while it is there (register_images unmarks it, mark_missing marks it)
    missing_since timestamptz,
    -- a photo or a video; a video's width and height are its frames' (it sizes like a
    -- photo of that size) and its duration is read from its container header
    kind facescan.media_kind NOT NULL DEFAULT 'image',
    duration_ms integer CHECK (duration_ms >= 0),
    CONSTRAINT images_library_path_key UNIQUE (library, path),
    CONSTRAINT images_leased_has_owner CHECK ((state = 'leased') = (lease_owner IS NOT NULL))
) WITH (fillfactor = 80);  -- room on each page for HOT updates while an image is worked on
-- The runnable queue: claim walks this partial index in claim order (missing images,
-- which are never claimed, left out).
CREATE INDEX images_runnable ON facescan.images
    (library, step, size_class, priority DESC, attempts, id)
    WHERE state = 'pending' AND missing_since IS NULL;
-- Also serves the foreign key check of every lease deleted ("WHERE lease_owner = $1"):
-- the predicate is implied by it, as state = 'leased' would not be (a full table scan).
-- In start_next's order: the next image of a lease is its first live entry.
CREATE INDEX images_leased ON facescan.images (lease_owner, priority DESC, attempts, id)
    WHERE lease_owner IS NOT NULL;
CREATE INDEX images_failing ON facescan.images (library, error_type)
    WHERE error_type IS NOT NULL;
-- A library's videos, for status (counted apart from photos, O(videos))
CREATE INDEX images_videos ON facescan.images (library, state) WHERE kind = 'video';

-- One row per image whose detection really ran (even with 0 faces).
CREATE TABLE facescan.detections (
    image_id bigint PRIMARY KEY REFERENCES facescan.images (id) ON DELETE CASCADE,
    model text NOT NULL,
    scale real NOT NULL,
    max_dimension integer NOT NULL,
    step smallint NOT NULL,
    face_count integer NOT NULL,
    original_width integer,
    original_height integer,
    degraded boolean NOT NULL,
    duration_ms integer NOT NULL,
    worker text NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    -- a video's sampled frames, timestamps in ms (NULL for a photo)
    frames integer[]
);

-- Boxes are in ORIGINAL image pixels, in the orientation a person sees the image.
CREATE TABLE facescan.faces (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_id bigint NOT NULL REFERENCES facescan.images (id) ON DELETE CASCADE,
    box_top integer NOT NULL,
    box_right integer NOT NULL,
    box_bottom integer NOT NULL,
    box_left integer NOT NULL,
    score real,
    landmarks real[],  -- x1, y1, x2, y2, ... in original pixels
    model text NOT NULL,
    embedding_dlib vector(128),
    embedding_arcface vector(512),
    -- a video's face: its frame's timestamp, and its track (faces of one video that are
    -- one person across frames share it; numbered per video from 0). NULL for a photo.
    frame_ms integer CHECK (frame_ms >= 0),
    track smallint CHECK (track >= 0),
    CHECK (box_left <= box_right AND box_top <= box_bottom),
    CHECK (num_nonnulls(embedding_dlib, embedding_arcface) <= 1)
);
CREATE INDEX faces_image ON facescan.faces (image_id);
CREATE INDEX faces_embedding_dlib ON facescan.faces USING hnsw (embedding_dlib vector_l2_ops);
CREATE INDEX faces_embedding_arcface ON facescan.faces
    USING hnsw (embedding_arcface vector_cosine_ops);

-- One row per failing image (cleared when it succeeds, kept when it is dead).
CREATE TABLE facescan.failures (
    image_id bigint PRIMARY KEY REFERENCES facescan.images (id) ON DELETE CASCADE,
    attempts integer NOT NULL CHECK (attempts >= 1),  -- every failed attempt
    error_type facescan.error_type NOT NULL,
    last_error text NOT NULL,
    original_width integer,
    original_height integer,
    file_bytes bigint,
    last_scale real,
    last_model text,
    first_failure_at timestamptz NOT NULL DEFAULT now(),
    last_failure_at timestamptz NOT NULL DEFAULT now(),
    next_retry_at timestamptz,
    dead boolean NOT NULL DEFAULT false
);

-- Append-only history of every processing attempt.
CREATE TABLE facescan.attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_id bigint NOT NULL REFERENCES facescan.images (id) ON DELETE CASCADE,
    library text NOT NULL,
    worker text NOT NULL,
    step smallint NOT NULL,
    model text NOT NULL,
    scale real NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome facescan.attempt_outcome,
    error_type facescan.error_type,
    error text,
    CHECK ((outcome = 'failed') = (error_type IS NOT NULL))
) WITH (fillfactor = 90);  -- closing an attempt is a HOT update (no indexed column changes)
CREATE INDEX attempts_image ON facescan.attempts (image_id);
CREATE INDEX attempts_library_recent ON facescan.attempts (library, id DESC);

-- Counters that make status O(groups), not O(images). Maintained by statement-level
-- triggers on images; each backend writes its own shard so workers never queue on one
-- hot row. compact_counts() folds shards and drops zero rows.
CREATE TABLE facescan.image_counts (
    library text NOT NULL,
    state facescan.image_state NOT NULL,
    step smallint NOT NULL,
    size_class smallint NOT NULL,
    error_type facescan.error_type,
    degraded boolean NOT NULL,
    shard smallint NOT NULL,
    images bigint NOT NULL,
    faces bigint NOT NULL,
    -- images marked missing (images.missing_since), counted apart from their state
    missing boolean NOT NULL DEFAULT false,
    CONSTRAINT image_counts_key UNIQUE NULLS NOT DISTINCT
        (library, state, step, size_class, error_type, degraded, missing, shard)
);

-- Which database roles may use which library through the queue's functions (`facescan
-- db grant`). Such a role needs no table privilege: the functions its calls name run as
-- the schema's owner (SECURITY DEFINER) and each one refuses a library the session's
-- role is not listed for here (facescan.authorize). operator: the control plane's calls
-- too (register, claim, release, requeue, status); without it a detector's only (start,
-- commit, fail, heartbeat, release its lease). The schema's owner, and a role granted
-- every privilege on facescan.images, may use every library without a row here.
CREATE TABLE facescan.library_roles (
    role text NOT NULL CHECK (role <> ''),
    library text NOT NULL CHECK (library <> ''),
    operator boolean NOT NULL DEFAULT false,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, library)
);

-- People (migration 5): each library's matching thresholds, its known people and,
-- for each face matching has considered, whom it was matched to (see
-- migrations/0005_people.sql for the why of each default).
CREATE TYPE facescan.person_source AS ENUM ('automatic', 'user', 'import');
CREATE TYPE facescan.person_status AS ENUM ('matched', 'pending');

-- Distances are those of each model's HNSW index: Euclidean (<->) for dlib's 128-d
-- embeddings, cosine (<=>, 1 - cosine similarity) for ArcFace's 512-d ones; embeddings
-- of two models are never compared. A face nearer than the auto-tag distance to a
-- person's reference face is tagged (matched); up to the match distance it is pending
-- (a suggestion to confirm); beyond it, nobody's.
-- dlib: 0.6 is face_recognition's own tolerance (99.38 % on LFW); 0.5 is tighter, where
-- dlib's impostor pairs are rare. ArcFace (buffalo_l, w600k_r50): 0.5 is Immich's
-- maxDistance for the same model (cosine similarity >= 0.5; impostor pairs of ArcFace
-- models seldom pass 0.3-0.4 similarity); 0.4 (similarity >= 0.6) tags automatically.
-- min_faces, min_cluster_size, min_samples: for clustering unknown faces (a later step):
-- the fewest faces a cluster needs to be offered as a person (Immich's minFaces), and
-- HDBSCAN's two parameters.
CREATE TABLE facescan.people_settings (
    library text PRIMARY KEY REFERENCES facescan.libraries (name) ON DELETE CASCADE,
    dlib_match_distance real NOT NULL DEFAULT 0.6,
    dlib_auto_tag_distance real NOT NULL DEFAULT 0.5,
    arcface_match_distance real NOT NULL DEFAULT 0.5,
    arcface_auto_tag_distance real NOT NULL DEFAULT 0.4,
    min_faces integer NOT NULL DEFAULT 3 CHECK (min_faces >= 1),
    min_cluster_size integer NOT NULL DEFAULT 3 CHECK (min_cluster_size >= 2),
    min_samples integer NOT NULL DEFAULT 2 CHECK (min_samples >= 1),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (0 < dlib_auto_tag_distance AND dlib_auto_tag_distance <= dlib_match_distance),
    CHECK (0 < arcface_auto_tag_distance AND arcface_auto_tag_distance <= arcface_match_distance
           AND arcface_match_distance <= 2)
);

CREATE TABLE facescan.people (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    library text NOT NULL REFERENCES facescan.libraries (name) ON DELETE CASCADE,
    -- NULL: an unnamed person, made by clustering (migration 7; "unnamed #<id>"); the
    -- unique (library, name) below holds among named people only (NULLs are distinct)
    name text CONSTRAINT people_name_valid
        CHECK (name <> '' AND name = btrim(name) AND name !~ '[[:cntrl:]]'),
    hidden boolean NOT NULL DEFAULT false,
    -- the face shown for the person (the first reference face by default)
    featured_face bigint REFERENCES facescan.faces (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT people_library_name_key UNIQUE (library, name)
);

-- Reference faces of a person: status matched (tagged automatically, or given by the user
-- or an import). Automatic matching never changes a row whose source is user or import.
CREATE TABLE facescan.face_people (
    face_id bigint PRIMARY KEY REFERENCES facescan.faces (id) ON DELETE CASCADE,
    image_id bigint NOT NULL,  -- the face's image (faces.image_id never changes)
    person_id bigint REFERENCES facescan.people (id) ON DELETE CASCADE,
    source facescan.person_source,
    status facescan.person_status,
    distance real CHECK (distance >= 0),  -- to the nearest reference face (automatic)
    assigned_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((person_id IS NULL) = (source IS NULL) AND (person_id IS NULL) = (status IS NULL)),
    CHECK (source = 'automatic' OR status = 'matched'),
    CHECK (source <> 'automatic' OR distance IS NOT NULL),
    -- never two faces of one photo in one person (also serves a person's faces)
    CONSTRAINT face_people_one_face_per_photo UNIQUE (person_id, image_id)
);

DO $$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT r.rolname FROM pg_roles r
        WHERE r.oid <> (SELECT nspowner FROM pg_namespace WHERE nspname = 'facescan')
          AND has_table_privilege(r.oid, 'facescan.images', 'SELECT')
          AND has_table_privilege(r.oid, 'facescan.images', 'INSERT')
          AND has_table_privilege(r.oid, 'facescan.images', 'UPDATE')
          AND has_table_privilege(r.oid, 'facescan.images', 'DELETE')
          AND NOT r.rolsuper
        ORDER BY r.rolname
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON facescan.people_settings, '
                       'facescan.people, facescan.face_people TO %I', v_role);
    END LOOP;
END
$$;

-- People's clusters (migration 7): rejected faces and the undo log of the user's
-- merges, moves and removals (see migrations/0007_people_clusters.sql).
CREATE TABLE facescan.face_rejections (
    face_id bigint NOT NULL REFERENCES facescan.faces (id) ON DELETE CASCADE,
    person_id bigint NOT NULL REFERENCES facescan.people (id) ON DELETE CASCADE,
    rejected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (face_id, person_id)
);
CREATE INDEX face_rejections_person ON facescan.face_rejections (person_id);

CREATE TYPE facescan.people_action AS ENUM ('merge', 'move', 'remove');

-- undo: what reverses the action (facescan_people.actions writes and reads it); undone_at
-- set once it was undone. One library's actions are undone newest first.
CREATE TABLE facescan.people_actions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    library text NOT NULL REFERENCES facescan.libraries (name) ON DELETE CASCADE,
    action facescan.people_action NOT NULL,
    summary text NOT NULL,
    undo jsonb NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now(),
    undone_at timestamptz
);
CREATE INDEX people_actions_undoable ON facescan.people_actions (library, id DESC)
    WHERE undone_at IS NULL;

DO $$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT r.rolname FROM pg_roles r
        WHERE r.oid <> (SELECT nspowner FROM pg_namespace WHERE nspname = 'facescan')
          AND has_table_privilege(r.oid, 'facescan.images', 'SELECT')
          AND has_table_privilege(r.oid, 'facescan.images', 'INSERT')
          AND has_table_privilege(r.oid, 'facescan.images', 'UPDATE')
          AND has_table_privilege(r.oid, 'facescan.images', 'DELETE')
          AND NOT r.rolsuper
        ORDER BY r.rolname
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON facescan.face_rejections, '
                       'facescan.people_actions TO %I', v_role);
    END LOOP;
END
$$;

-- A view shaped like the older worker's face_detection_failures table.
CREATE VIEW facescan.face_detection_failures AS
SELECT
    f.image_id AS id,
    i.path AS image_path,
    f.attempts AS retry_count,
    f.last_error,
    f.error_type::text AS last_error_type,
    f.original_width,
    f.original_height,
    f.file_bytes AS file_size_bytes,
    f.last_scale AS last_attempted_scale,
    f.first_failure_at,
    f.last_failure_at,
    f.next_retry_at AS next_retry_after,
    f.dead AS permanently_failed
FROM facescan.failures f
JOIN facescan.images i ON i.id = f.image_id;

INSERT INTO facescan.schema_version (version, description) VALUES (1, 'initial schema');
INSERT INTO facescan.schema_version (version, description) VALUES (2, 'cheaper queue transitions');
INSERT INTO facescan.schema_version (version, description) VALUES (3, 'library roles');
INSERT INTO facescan.schema_version (version, description) VALUES (4, 'changed and missing files');
INSERT INTO facescan.schema_version (version, description) VALUES (5, 'people');
INSERT INTO facescan.schema_version (version, description) VALUES (6, 'library max dimension');
INSERT INTO facescan.schema_version (version, description) VALUES (7, 'people clusters');

-- API jobs (migration 8): one row per POST /process of `facescan serve`; the job's state
-- is its image's (see migrations/0008_api_jobs.sql for the why).
CREATE TABLE facescan.api_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    library text NOT NULL REFERENCES facescan.libraries (name) ON DELETE CASCADE,
    job_id text NOT NULL CHECK (job_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    media_id text NOT NULL CHECK (media_id <> ''),
    media_url text,
    media_path text,
    callback_url text,
    image_id bigint UNIQUE REFERENCES facescan.images (id) ON DELETE SET NULL,
    error_type text CHECK (error_type IN ('download_failed')),
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivery_attempts integer NOT NULL DEFAULT 0 CHECK (delivery_attempts >= 0),
    next_delivery_at timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    last_delivery_error text,
    CONSTRAINT api_jobs_library_job_key UNIQUE (library, job_id),
    CONSTRAINT api_jobs_one_source CHECK (num_nonnulls(media_url, media_path) = 1),
    CONSTRAINT api_jobs_image_or_error CHECK (error_type IS NULL OR image_id IS NULL),
    CONSTRAINT api_jobs_acknowledged_callback
        CHECK (acknowledged_at IS NULL OR callback_url IS NOT NULL)
);
-- The deliveries still owed, in the order they fall due.
CREATE INDEX api_jobs_undelivered ON facescan.api_jobs (library, next_delivery_at)
    WHERE callback_url IS NOT NULL AND acknowledged_at IS NULL;

DO $$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT r.rolname FROM pg_roles r
        WHERE r.oid <> (SELECT nspowner FROM pg_namespace WHERE nspname = 'facescan')
          AND has_table_privilege(r.oid, 'facescan.images', 'SELECT')
          AND has_table_privilege(r.oid, 'facescan.images', 'INSERT')
          AND has_table_privilege(r.oid, 'facescan.images', 'UPDATE')
          AND has_table_privilege(r.oid, 'facescan.images', 'DELETE')
          AND NOT r.rolsuper
        ORDER BY r.rolname
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON facescan.api_jobs TO %I',
                       v_role);
    END LOOP;
END
$$;

INSERT INTO facescan.schema_version (version, description) VALUES (8, 'api jobs');
INSERT INTO facescan.schema_version (version, description) VALUES (9, 'videos');
