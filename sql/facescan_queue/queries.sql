-- facescan: every query the Python client runs, by name. Loaded by facescan_queue.queries;
-- parameters are positional ($1, $2, ...) and always bound, never formatted in.

-- name: schema_version
SELECT max(version) FROM facescan.schema_version;

-- name: ensure_library
SELECT * FROM facescan.ensure_library($1, $2, $3, $4, $5, $6, $7);

-- name: register_images
SELECT facescan.register_images($1, $2, $3, $4, $5, $6);

-- name: claim_batch
SELECT * FROM facescan.claim_batch($1, $2, $3, $4, $5, $6);

-- name: heartbeat
SELECT facescan.heartbeat($1, $2);

-- name: start_next
SELECT * FROM facescan.start_next($1);

-- name: peek_next
-- the image start_next would start next (read only: lets a worker prefetch it)
SELECT i.path FROM facescan.images i
WHERE i.lease_owner = $1 AND i.state = 'leased'
  AND i.id IS DISTINCT FROM (SELECT l.started_image FROM facescan.leases l WHERE l.owner = $1)
ORDER BY i.priority DESC, i.attempts, i.id
LIMIT 1;

-- name: step_down
SELECT * FROM facescan.step_down($1, $2, $3);

-- name: complete_image
SELECT facescan.complete_image($1, $2, $3, $4, $5, $6, $7::jsonb);

-- name: complete_and_start_next
SELECT * FROM facescan.complete_and_start_next($1, $2, $3, $4, $5, $6, $7::jsonb);

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
SELECT l.owner, l.step, l.size_class, l.claimed_at, l.expires_at,
       (SELECT count(*) FROM facescan.images i
        WHERE i.lease_owner = l.owner AND i.state = 'leased')::integer AS images
FROM facescan.leases l
WHERE l.library = $1
ORDER BY l.claimed_at, l.owner;

-- name: libraries
SELECT name FROM facescan.libraries ORDER BY name;

-- name: list_failures
SELECT i.path, f.error_type, f.attempts, f.last_error, f.next_retry_at, f.dead,
       f.last_model, f.last_scale, f.last_failure_at
FROM facescan.failures f
JOIN facescan.images i ON i.id = f.image_id
WHERE i.library = $1
  AND ($2::facescan.error_type IS NULL OR f.error_type = $2)
  AND (NOT $3 OR f.dead)
ORDER BY i.path
LIMIT $4;

-- name: image_by_path
SELECT i.id, i.path, i.state, i.step, i.attempts, i.error_type, i.degraded, i.face_count,
       i.width, i.height, d.model, d.scale, d.original_width, d.original_height
FROM facescan.images i
LEFT JOIN facescan.detections d ON d.image_id = i.id
WHERE i.library = $1 AND i.path = $2;

-- name: faces_of_image
SELECT f.box_top, f.box_right, f.box_bottom, f.box_left, f.score, f.model, d.scale,
       f.landmarks
FROM facescan.faces f
JOIN facescan.detections d ON d.image_id = f.image_id
WHERE f.image_id = $1
ORDER BY f.box_left, f.box_top, f.id;

-- name: faces_per_image
SELECT path, face_count FROM facescan.images
WHERE library = $1 AND state = 'done'
ORDER BY path;

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
