-- facescan: every query the Python client runs, by name. Loaded by facescan_queue.queries;
-- parameters are positional ($1, $2, ...) and always bound, never formatted in.

-- name: schema_version
SELECT max(version) FROM facescan.schema_version;

-- name: ensure_library
SELECT * FROM facescan.ensure_library($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);

-- name: register_images
SELECT * FROM facescan.register_images($1, $2, $3, $4, $5, $6, $7, $8::facescan.media_kind[], $9);

-- name: unseen_images
SELECT path FROM facescan.unseen_images($1, $2) AS path;

-- name: mark_missing
SELECT facescan.mark_missing($1, $2);

-- name: claim_batch
SELECT * FROM facescan.claim_batch($1, $2, $3, $4, $5, $6);

-- name: heartbeat
SELECT facescan.heartbeat($1, $2);

-- name: start_next
SELECT * FROM facescan.start_next($1);

-- name: peek_next
-- the image start_next would start next (read only: lets a worker prefetch it)
SELECT facescan.peek_next($1);

-- name: step_down
SELECT * FROM facescan.step_down($1, $2, $3);

-- name: complete_image
SELECT facescan.complete_image($1, $2, $3, $4, $5, $6, $7::jsonb, $8);

-- name: complete_and_start_next
SELECT * FROM facescan.complete_and_start_next($1, $2, $3, $4, $5, $6, $7::jsonb, $8);

-- name: fail_image
SELECT * FROM facescan.fail_image($1, $2, $3, $4, $5, $6, $7);

-- name: release_lease
SELECT * FROM facescan.release_lease($1, $2, $3);

-- name: reclaim_expired
SELECT * FROM facescan.reclaim_expired($1);

-- name: requeue
SELECT facescan.requeue($1, $2, $3, $4);

-- name: rescan
SELECT facescan.rescan($1, $2, $3);

-- name: status_counts
SELECT * FROM facescan.status_counts($1);

-- name: video_counts
SELECT * FROM facescan.video_counts($1);

-- name: runnable_groups
SELECT * FROM facescan.runnable_groups($1, $2);

-- name: recent_outcomes
SELECT * FROM facescan.recent_outcomes($1, $2, $3);

-- name: attempt_clock
SELECT * FROM facescan.attempt_clock($1);

-- name: attempt_outcomes
SELECT * FROM facescan.attempt_outcomes($1, $2, $3, $4);

-- name: compact_counts
SELECT facescan.compact_counts();

-- name: recount
SELECT facescan.recount($1);

-- name: leases
SELECT * FROM facescan.leases_of($1);

-- name: libraries
-- the libraries this role may use (every one for the schema's owner)
SELECT name FROM facescan.visible_libraries() AS name;

-- name: list_failures
SELECT * FROM facescan.list_failures($1, $2, $3, $4);

-- name: image_by_path
SELECT * FROM facescan.image_by_path($1, $2);

-- name: faces_of_image
SELECT * FROM facescan.faces_of_image($1);

-- name: faces_per_image
SELECT * FROM facescan.faces_per_image($1);

-- name: video_face_frames
SELECT * FROM facescan.video_face_frames($1);

-- name: legacy_table_exists
SELECT to_regclass('ai_metadata') IS NOT NULL;

-- name: legacy_ai_metadata
-- the older worker's list of images (facescan import-legacy)
SELECT image_path, coalesce(is_processed, false) AS is_processed
FROM ai_metadata
ORDER BY image_path;

-- name: table_privileges
SELECT c.relname AS table_name,
       has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')
       AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE')
       AS granted
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'facescan' AND c.relkind = 'r'
ORDER BY c.relname;

-- name: schema_usage
SELECT has_schema_privilege('facescan', 'USAGE');

-- name: access
-- what this role may use: every library (unrestricted), or the ones granted to it
SELECT * FROM facescan.access();

-- name: library_roles_exist
-- schema version 3 or later (facescan.access and the library grants exist)
SELECT to_regprocedure('facescan.access()') IS NOT NULL;

-- name: grant_library
SELECT facescan.grant_library($1, $2, $3);

-- name: revoke_library
SELECT facescan.revoke_library($1, $2);

-- name: schema_owner
-- NULL before the first migration
SELECT n.nspowner::regrole::text FROM pg_namespace n WHERE n.nspname = 'facescan';

-- name: current_database
SELECT current_database();

-- name: may_migrate
-- whether this role owns the facescan schema (is a member of its owner), or none exists
SELECT coalesce(pg_has_role(n.nspowner, 'MEMBER'), true)
FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = 'facescan';

-- name: facescan_schema_exists
SELECT to_regnamespace('facescan') IS NOT NULL;

-- name: vector_extension
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS installed,
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') AS available;

-- name: legacy_failures_table
SELECT n.nspname AS schema_name, c.relname AS table_name, c.relkind::text AS kind,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relname = 'face_detection_failures' AND n.nspname <> 'facescan'
  AND c.relkind IN ('r', 'v', 'p')
GROUP BY n.nspname, c.relname, c.relkind;

-- name: migration_lock
SELECT pg_advisory_xact_lock(7166504863370871);

-- name: done_with_other_settings
-- Done images of a library whose result came from other settings than ($2 cascade models,
-- $3 cascade scales, $4 max dimension): a result is current when its max dimension is
-- $4 and its model and scale are those of the cascade at its own step or at the first
-- (facescan's own images, beneath .facescan/, left out: rescan never redoes them).
SELECT d.model, d.scale, d.max_dimension, count(*)::integer AS images
FROM facescan.images i
JOIN facescan.detections d ON d.image_id = i.id
WHERE i.library = $1 AND i.state = 'done' AND i.path NOT LIKE '.facescan/%'
  AND NOT (d.max_dimension = $4 AND (
    (d.model = ($2::text[])[d.step + 1] AND d.scale = ($3::real[])[d.step + 1]) IS TRUE
    OR (d.model = ($2::text[])[1] AND d.scale = ($3::real[])[1])))
GROUP BY d.model, d.scale, d.max_dimension
ORDER BY images DESC, d.model, d.scale DESC;

-- name: rescan_other_settings
-- facescan.rescan of the images done_with_other_settings counts.
SELECT facescan.rescan($1, false, ARRAY(
    SELECT i.path FROM facescan.images i
    JOIN facescan.detections d ON d.image_id = i.id
    WHERE i.library = $1 AND i.state = 'done'
      AND NOT (d.max_dimension = $4 AND (
        (d.model = ($2::text[])[d.step + 1] AND d.scale = ($3::real[])[d.step + 1]) IS TRUE
        OR (d.model = ($2::text[])[1] AND d.scale = ($3::real[])[1])))));

-- name: next_retry
-- When the first pending image of a library that waits for its retry back-off is due
-- (NULL: none waits).
SELECT min(next_attempt_at) FROM facescan.images
WHERE library = $1 AND state = 'pending' AND missing_since IS NULL AND next_attempt_at > now();

-- name: people_counts
SELECT * FROM facescan.people_counts($1);

-- name: set_people_settings
SELECT facescan.set_people_settings($1, $2, $3, $4, $5);

-- API jobs (facescan_queue.api_jobs: POST /process of `facescan serve`) ---------------------

-- name: api_job_insert
-- a new job; nothing (no row) when the library already has one with this job_id
INSERT INTO facescan.api_jobs
    (library, job_id, media_id, media_url, media_path, callback_url, error_type, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (library, job_id) DO NOTHING
RETURNING id;

-- name: api_job_attach
-- the image registered for a job ($3: its path in the library)
UPDATE facescan.api_jobs j SET image_id = i.id
FROM facescan.images i
WHERE j.library = $1 AND j.job_id = $2 AND i.library = $1 AND i.path = $3;

-- name: api_job
-- one job with its image's state and, once settled, its detection or failure
SELECT j.job_id, j.media_id, j.media_url, j.media_path, j.callback_url, j.image_id,
       j.error_type AS fetch_error_type, j.error AS fetch_error, j.created_at,
       j.delivery_attempts, j.acknowledged_at, j.last_delivery_error,
       CASE WHEN isfinite(j.next_delivery_at) THEN j.next_delivery_at END AS next_delivery_at,
       j.acknowledged_at IS NULL AND NOT isfinite(j.next_delivery_at) AS delivery_given_up,
       i.state::text AS image_state, i.attempts, i.degraded, i.updated_at,
       i.kind::text AS kind, i.duration_ms,
       d.model, d.scale, d.original_width, d.original_height, d.detected_at,
       f.error_type::text AS failure_type, f.last_error, f.last_failure_at
FROM facescan.api_jobs j
LEFT JOIN facescan.images i ON i.id = j.image_id
LEFT JOIN facescan.detections d ON d.image_id = i.id AND i.state = 'done'
LEFT JOIN facescan.failures f ON f.image_id = i.id AND i.state = 'dead'
WHERE j.library = $1 AND j.job_id = $2;

-- name: api_job_faces
-- the committed faces of a job's image, each with its embedding as an array (a video's
-- with their frame's timestamp and track, in frame order)
SELECT f.box_top, f.box_right, f.box_bottom, f.box_left, f.score, f.landmarks,
       coalesce(f.embedding_dlib::real[], f.embedding_arcface::real[]) AS embedding,
       f.embedding_arcface IS NOT NULL AS arcface, f.frame_ms, f.track
FROM facescan.faces f
WHERE f.image_id = $1
ORDER BY f.frame_ms NULLS FIRST, f.box_left, f.box_top, f.id;

-- name: api_jobs_due
-- Takes up to $3 settled jobs of library $1 whose callback is due and not acknowledged:
-- counts the attempt and holds it for $2 seconds (a deliverer that dies mid-delivery
-- leaves it to be taken again then; concurrent deliverers skip each other's). A
-- delivery given up is due at 'infinity': never now, past the index's range.
UPDATE facescan.api_jobs j
SET delivery_attempts = j.delivery_attempts + 1,
    next_delivery_at = now() + make_interval(secs => $2)
WHERE j.id IN (
    SELECT o.id FROM facescan.api_jobs o
    LEFT JOIN facescan.images i ON i.id = o.image_id
    WHERE o.library = $1 AND o.callback_url IS NOT NULL AND o.acknowledged_at IS NULL
      AND o.next_delivery_at <= now()
      AND (o.image_id IS NULL OR i.state IN ('done', 'dead'))
    ORDER BY o.next_delivery_at
    LIMIT $3
    FOR UPDATE OF o SKIP LOCKED)
RETURNING j.job_id, j.callback_url, j.delivery_attempts;

-- name: api_job_acknowledged
-- records the one acknowledged delivery (false: one was recorded already)
UPDATE facescan.api_jobs SET acknowledged_at = now(), last_delivery_error = NULL
WHERE library = $1 AND job_id = $2 AND acknowledged_at IS NULL
RETURNING true;

-- name: api_job_delivery_failed
-- a delivery not acknowledged: the next one in $3 seconds
UPDATE facescan.api_jobs
SET next_delivery_at = now() + make_interval(secs => $3), last_delivery_error = $4
WHERE library = $1 AND job_id = $2 AND acknowledged_at IS NULL;

-- name: api_job_delivery_given_up
-- no more deliveries (too many attempts, too old, a target refused): due at 'infinity',
-- which no api_jobs_due ever reaches, with why ($3)
UPDATE facescan.api_jobs
SET next_delivery_at = 'infinity', last_delivery_error = $3
WHERE library = $1 AND job_id = $2 AND acknowledged_at IS NULL;
