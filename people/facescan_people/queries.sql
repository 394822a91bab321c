-- facescan people: every query the people's client runs, by name. Loaded by
-- facescan_people.queries; parameters are positional ($1, $2, ...) and always bound.
-- Embeddings of two models are never compared: dlib's by Euclidean distance (<->, the
-- faces_embedding_dlib index), ArcFace's by cosine distance (<=>, faces_embedding_arcface).

-- name: lock_library
-- Serialises the writers of one library's matches (sync batches, people add) until commit.
SELECT pg_advisory_xact_lock(hashtextextended('facescan.people:' || $1, 0));

-- name: search_settings
-- HNSW scans that go on past ef_search until the query's LIMIT is met (pgvector >= 0.8),
-- in exact distance order, for the filtered nearest-neighbour queries below; ef_search
-- 100, not pgvector's 40: at 1,000,000 ArcFace faces 40 finds 0.90 of the true 10
-- nearest, 80 0.95, 160 0.97 (bench/people_match_bench.py). And a plan made for each
-- run's parameters: from a statement's sixth run PostgreSQL may keep a generic plan,
-- which knows neither the LIMIT nor the library and compares every face with every
-- reference face (a sync then stalled after 5 batches).
SELECT set_config('hnsw.iterative_scan', 'strict_order', true),
       set_config('hnsw.max_scan_tuples', $1::integer::text, true),
       set_config('hnsw.ef_search', '100', true),
       set_config('plan_cache_mode', 'force_custom_plan', true);

-- name: settings
-- The library's thresholds, its row made with the defaults the first time.
WITH made AS (
    INSERT INTO facescan.people_settings (library) VALUES ($1)
    ON CONFLICT (library) DO NOTHING
    RETURNING *
)
SELECT * FROM made
UNION ALL
SELECT * FROM facescan.people_settings WHERE library = $1
LIMIT 1;

-- name: people_count
SELECT count(*)::integer FROM facescan.people WHERE library = $1;

-- name: new_faces
-- Faces of the library that matching has not considered yet, in id order from $2. A
-- video's track (one person across its frames) is one face for People: its first face
-- stands for it (the track rule, in every query that picks faces for People).
SELECT f.id, f.image_id
FROM facescan.faces f
JOIN facescan.images i ON i.id = f.image_id
WHERE i.library = $1 AND f.id > $2
  AND NOT EXISTS (SELECT 1 FROM facescan.face_people fp WHERE fp.face_id = f.id)
  AND (f.track IS NULL OR NOT EXISTS (SELECT 1 FROM facescan.faces o
      WHERE o.image_id = f.image_id AND o.track = f.track AND o.id < f.id))
ORDER BY f.id
LIMIT $3;

-- name: nearest_references
-- For each face of $1: its $3 nearest reference faces (status matched) of library $2's
-- people, through the face's model's index.
SELECT f.id AS face_id, f.image_id, n.person_id, n.kind, n.distance
FROM facescan.faces f
CROSS JOIN LATERAL (
    (SELECT fp.person_id, 'dlib' AS kind, (r.embedding_dlib <-> f.embedding_dlib)::real AS distance
     FROM facescan.faces r
     JOIN facescan.face_people fp ON fp.face_id = r.id AND fp.status = 'matched'
     JOIN facescan.people p ON p.id = fp.person_id AND p.library = $2
     WHERE f.embedding_dlib IS NOT NULL AND r.embedding_dlib IS NOT NULL
     ORDER BY r.embedding_dlib <-> f.embedding_dlib
     LIMIT $3)
    UNION ALL
    (SELECT fp.person_id, 'arcface' AS kind,
            (r.embedding_arcface <=> f.embedding_arcface)::real AS distance
     FROM facescan.faces r
     JOIN facescan.face_people fp ON fp.face_id = r.id AND fp.status = 'matched'
     JOIN facescan.people p ON p.id = fp.person_id AND p.library = $2
     WHERE f.embedding_arcface IS NOT NULL AND r.embedding_arcface IS NOT NULL
     ORDER BY r.embedding_arcface <=> f.embedding_arcface
     LIMIT $3)
) n
WHERE f.id = ANY($1::bigint[]);

-- name: nearest_faces
-- The $2 faces nearest reference face $1 (itself included), through its model's index,
-- each with its library and what matching decided for it so far (no row: not considered).
WITH ref AS MATERIALIZED (
    SELECT embedding_dlib, embedding_arcface FROM facescan.faces WHERE id = $1
), near AS MATERIALIZED (
    (SELECT f.id, f.image_id, 'dlib' AS kind,
            (f.embedding_dlib <-> (SELECT embedding_dlib FROM ref))::real AS distance
     FROM facescan.faces f
     WHERE (SELECT embedding_dlib FROM ref) IS NOT NULL
     ORDER BY f.embedding_dlib <-> (SELECT embedding_dlib FROM ref)
     LIMIT $2)
    UNION ALL
    (SELECT f.id, f.image_id, 'arcface' AS kind,
            (f.embedding_arcface <=> (SELECT embedding_arcface FROM ref))::real AS distance
     FROM facescan.faces f
     WHERE (SELECT embedding_arcface FROM ref) IS NOT NULL
     ORDER BY f.embedding_arcface <=> (SELECT embedding_arcface FROM ref)
     LIMIT $2)
)
SELECT n.id AS face_id, n.image_id, n.kind, n.distance, i.library,
       fp.face_id IS NOT NULL AS considered, fp.person_id, fp.source::text AS source,
       fp.status::text AS status, fp.distance AS held_distance
FROM near n
JOIN facescan.faces f ON f.id = n.id
JOIN facescan.images i ON i.id = n.image_id
LEFT JOIN facescan.face_people fp ON fp.face_id = n.id
WHERE (f.track IS NULL OR NOT EXISTS (SELECT 1 FROM facescan.faces o
      WHERE o.image_id = f.image_id AND o.track = f.track AND o.id < f.id))
ORDER BY n.distance, n.id;

-- name: holders
-- The faces people $1[k] already have in images $2[k].
SELECT fp.face_id, fp.image_id, fp.person_id, fp.source::text AS source, fp.distance
FROM unnest($1::bigint[], $2::bigint[]) AS k(person_id, image_id)
JOIN facescan.face_people fp ON fp.person_id = k.person_id AND fp.image_id = k.image_id;

-- name: unassign
-- Automatic matches taken back (the face stays considered, nobody's).
UPDATE facescan.face_people
SET person_id = NULL, source = NULL, status = NULL, distance = NULL, assigned_at = now()
WHERE face_id = ANY($1::bigint[]) AND source = 'automatic';

-- name: record
-- Writes what matching decided for faces $1 (images $2): person $3 (NULL: nobody's),
-- source $4, status $5, distance $6. A face the user or an import gave a person keeps it.
INSERT INTO facescan.face_people (face_id, image_id, person_id, source, status, distance)
SELECT r.face_id, r.image_id, r.person_id, r.source::facescan.person_source,
       r.status::facescan.person_status, r.distance
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::real[])
     AS r(face_id, image_id, person_id, source, status, distance)
ON CONFLICT (face_id) DO UPDATE
SET person_id = EXCLUDED.person_id, source = EXCLUDED.source, status = EXCLUDED.status,
    distance = EXCLUDED.distance, assigned_at = now()
WHERE face_people.source IS NULL OR face_people.source = 'automatic'
   OR EXCLUDED.source <> 'automatic';

-- name: assignments_of
-- Who has faces $1 now (no row: not considered yet).
SELECT fp.face_id, coalesce(p.name, 'unnamed #' || p.id) AS person, fp.source::text AS source
FROM facescan.face_people fp
JOIN facescan.people p ON p.id = fp.person_id
WHERE fp.face_id = ANY($1::bigint[]);

-- name: faces_of_image
-- The faces of one image in the order `facescan faces` lists them (its --face numbers),
-- each with its person, if any (an unnamed one as "unnamed #<id>"). A video's face that
-- nobody has itself shows its track's person, whom the track's first face holds (the
-- track rule, new_faces); one the user moved to someone shows them.
SELECT f.id AS face_id, f.image_id, f.box_top, f.box_right, f.box_bottom, f.box_left,
       coalesce(p.name, 'unnamed #' || p.id) AS person, fp.distance, fp.status::text AS status, fp.source::text AS source
FROM facescan.faces f
LEFT JOIN LATERAL (
    SELECT h.* FROM facescan.face_people h
    WHERE h.face_id = f.id
       OR h.face_id = (SELECT min(o.id) FROM facescan.faces o
                       WHERE o.image_id = f.image_id AND o.track = f.track)
    ORDER BY h.person_id IS NULL, h.face_id <> f.id
    LIMIT 1
) fp ON true
LEFT JOIN facescan.people p ON p.id = fp.person_id
WHERE f.image_id = $1
ORDER BY f.box_left, f.box_top, f.id;

-- name: create_person
INSERT INTO facescan.people (library, name, featured_face) VALUES ($1, $2, $3)
RETURNING id;

-- name: people_named
-- The people called $1 (in library $2, or in any when NULL).
SELECT id, library, name, hidden, featured_face FROM facescan.people
WHERE name = $1 AND ($2::text IS NULL OR library = $2)
ORDER BY library;

-- name: list_people
-- People after the cursor ($3 unnamed, $4 name, $5 library, $6 id) in (name, library)
-- order, unnamed people last by id, hidden ones with $2, of library $1 (NULL: every
-- library), with their faces counted; $7 at most.
SELECT p.id, p.library, p.name, p.hidden, p.created_at,
       (SELECT count(*) FROM facescan.face_people fp
        WHERE fp.person_id = p.id AND fp.status = 'matched')::integer AS matched,
       (SELECT count(*) FROM facescan.face_people fp
        WHERE fp.person_id = p.id AND fp.status = 'pending')::integer AS pending
FROM facescan.people p
WHERE ($1::text IS NULL OR p.library = $1) AND ($2 OR NOT p.hidden)
  AND (p.name IS NULL, coalesce(p.name, ''), p.library, p.id)
      > ($3::boolean, $4::text, $5::text, $6::bigint)
ORDER BY p.name IS NULL, coalesce(p.name, ''), p.library, p.id
LIMIT $7;

-- name: person_faces
-- A person's faces: tagged and confirmed ones first, then pending, nearest first.
SELECT i.library, i.path, f.id AS face_id, f.box_top, f.box_right, f.box_bottom, f.box_left,
       fp.distance, fp.status::text AS status, fp.source::text AS source, fp.assigned_at
FROM facescan.face_people fp
JOIN facescan.faces f ON f.id = fp.face_id
JOIN facescan.images i ON i.id = fp.image_id
WHERE fp.person_id = $1
ORDER BY fp.status, fp.distance NULLS FIRST, i.path, f.id;

-- name: rename_person
UPDATE facescan.people SET name = $2, updated_at = now() WHERE id = $1;

-- name: hide_person
UPDATE facescan.people SET hidden = $2, updated_at = now() WHERE id = $1;
