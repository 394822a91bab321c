-- The HTTP API's own queries over the people's tables, by name (facescan_api.sql_queries):
-- storing an uploaded reference photo (POST /people, facescan_api.uploads) and reading
-- the faces /cluster clusters (facescan_api.cluster_service). Parameters are positional
-- and always bound. Everything else the routes do is facescan_people's.

-- name: library_model
-- The first cascade model of library $1 (its faces' embedding model); no row: no library.
SELECT cascade_models[1] AS model FROM facescan.libraries WHERE name = $1;

-- name: upload_image
-- An uploaded photo as an image of library $1 at reserved path $2, done (its detection
-- really ran, in the API's detector pool) with $6 faces; nothing (no row) when the library
-- has that path already: the same photo uploaded before.
INSERT INTO facescan.images
    (library, path, width, height, file_bytes, size_class, state, face_count)
VALUES ($1, $2, $3, $4, $5, facescan.size_class($3, $4), 'done', $6)
ON CONFLICT (library, path) DO NOTHING
RETURNING id;

-- name: upload_detection
-- The detection row of uploaded image $1: model $2 at scale $3 (after max dimension $4),
-- $5 faces, original size $6 x $7, degraded $8, in $9 ms, by the API's detector pool.
INSERT INTO facescan.detections (image_id, model, scale, max_dimension, step, face_count,
    original_width, original_height, degraded, duration_ms, worker)
VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $9, 'api-upload');

-- name: upload_faces
-- The faces of uploaded image $1 found by model $2, embeddings of kind $3 (dlib: 128
-- numbers, arcface: 512): boxes $4..$7, scores $8, landmarks $9 and embeddings $10 (text).
INSERT INTO facescan.faces (image_id, box_top, box_right, box_bottom, box_left, score,
                            landmarks, model, embedding_dlib, embedding_arcface)
SELECT $1, f.top, f."right", f.bottom, f."left", f.score, f.landmarks::real[], $2,
       CASE WHEN $3::text = 'dlib' THEN f.embedding::vector END,
       CASE WHEN $3::text = 'arcface' THEN f.embedding::vector END
FROM unnest($4::integer[], $5::integer[], $6::integer[], $7::integer[], $8::real[],
            $9::text[], $10::text[])
    AS f (top, "right", bottom, "left", score, landmarks, embedding);

-- name: image_at
-- Image $2 of library $1: its id and state.
SELECT id, state::text AS state FROM facescan.images WHERE library = $1 AND path = $2;

-- name: image_faces
-- The faces of image $1 in the order `facescan faces` numbers them (--face, `face`).
SELECT id AS face_id, box_top, box_right, box_bottom, box_left
FROM facescan.faces
WHERE image_id = $1
ORDER BY box_left, box_top, id;

-- name: drop_uploads
-- Uploaded images $1 of library $2 taken back (the person they were for was refused);
-- their faces and anything matching wrote for them go with them.
DELETE FROM facescan.images
WHERE id = ANY($1::bigint[]) AND library = $2 AND path LIKE '.facescan/uploads/%';

-- name: selected_images
-- The images of library $1 named by media ids $2 (of /process jobs of that library) or by
-- paths $3 (relative to the library), each with how it was named and its state.
SELECT i.id, i.path, i.state::text AS state, j.media_id
FROM facescan.api_jobs j
JOIN facescan.images i ON i.id = j.image_id
WHERE j.library = $1 AND j.media_id = ANY($2::text[])
UNION ALL
SELECT i.id, i.path, i.state::text, NULL
FROM facescan.images i
WHERE i.library = $1 AND i.path = ANY($3::text[]);

-- name: count_faces
-- How many faces with an embedding images $2 have (every image of library $1 when NULL).
SELECT count(*)::integer
FROM facescan.faces f
JOIN facescan.images i ON i.id = f.image_id
WHERE i.library = $1 AND ($2::bigint[] IS NULL OR i.id = ANY($2::bigint[]))
  AND (f.embedding_dlib IS NOT NULL OR f.embedding_arcface IS NOT NULL);

-- name: count_unassigned
-- How many faces of library $1 with an embedding nobody has (what `people cluster` takes:
-- a video's track once, by its first face).
SELECT count(*)::integer
FROM facescan.faces f
JOIN facescan.images i ON i.id = f.image_id
LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
WHERE i.library = $1 AND fp.person_id IS NULL
  AND (f.embedding_dlib IS NOT NULL OR f.embedding_arcface IS NOT NULL)
  AND (f.track IS NULL OR NOT EXISTS (SELECT 1 FROM facescan.faces o
      WHERE o.image_id = f.image_id AND o.track = f.track AND o.id < f.id));

-- name: faces_to_cluster
-- The faces with an embedding of images $2 (every image of library $1 when NULL; only
-- those nobody has with $3), each with its image's path, its box, its embedding's model
-- and the embedding, the person who has it and the /process media_id of its image, in id
-- order.
SELECT f.id AS face_id, f.image_id, i.path, f.box_top, f.box_right, f.box_bottom,
       f.box_left,
       CASE WHEN f.embedding_dlib IS NOT NULL THEN 'dlib' ELSE 'arcface' END AS kind,
       coalesce(f.embedding_dlib::real[], f.embedding_arcface::real[]) AS embedding,
       fp.person_id, j.media_id
FROM facescan.faces f
JOIN facescan.images i ON i.id = f.image_id
LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
LEFT JOIN facescan.api_jobs j ON j.image_id = i.id
WHERE i.library = $1 AND ($2::bigint[] IS NULL OR i.id = ANY($2::bigint[]))
  AND (NOT $3::boolean OR fp.person_id IS NULL)
  AND (f.embedding_dlib IS NOT NULL OR f.embedding_arcface IS NOT NULL)
  AND (f.track IS NULL OR NOT EXISTS (SELECT 1 FROM facescan.faces o
      WHERE o.image_id = f.image_id AND o.track = f.track AND o.id < f.id))  -- a video's track once
ORDER BY f.id;

-- name: faces_people
-- Who has faces $1 now (person NULL: nobody) and that person's featured face, each with
-- its image's path, box and /process media_id.
SELECT f.id AS face_id, i.path, f.box_top, f.box_right, f.box_bottom, f.box_left,
       fp.person_id, p.featured_face, j.media_id
FROM facescan.faces f
JOIN facescan.images i ON i.id = f.image_id
LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
LEFT JOIN facescan.people p ON p.id = fp.person_id
LEFT JOIN facescan.api_jobs j ON j.image_id = i.id
WHERE f.id = ANY($1::bigint[])
ORDER BY f.id;
