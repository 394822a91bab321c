-- facescan people cluster: the queries of clustering unknown faces into unnamed people,
-- by name (facescan_people.queries). $kind is 'dlib' or 'arcface': the two models'
-- embeddings are never compared. Unnamed people have name NULL (migration 7).

-- name: cluster_faces
-- The faces of library $1 with a $2 embedding that nobody has (no row, or person NULL),
-- in id order after face $3, with their embeddings.
SELECT f.id, f.image_id,
       CASE WHEN $2::text = 'dlib' THEN f.embedding_dlib::real[]
            ELSE f.embedding_arcface::real[] END AS embedding
FROM facescan.faces f
JOIN facescan.images i ON i.id = f.image_id
LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
WHERE i.library = $1 AND f.id > $3 AND fp.person_id IS NULL
  AND CASE WHEN $2::text = 'dlib' THEN f.embedding_dlib IS NOT NULL
           ELSE f.embedding_arcface IS NOT NULL END
  AND (f.track IS NULL OR NOT EXISTS (SELECT 1 FROM facescan.faces o
      WHERE o.image_id = f.image_id AND o.track = f.track AND o.id < f.id))  -- the track rule (queries.sql)
ORDER BY f.id
LIMIT $4;

-- name: cluster_neighbours_dlib
-- The $3 faces of library $1 nearest embedding $2 (text) that clustering has seen: those
-- up to face $5 in id order (the order it takes them in) and every reference face; each
-- with the person it is a reference face of (status matched), only those that have one
-- when $4. Index-ordered (HNSW, the iterative scan filling the LIMIT past the faces the
-- filter drops), materialised, then filtered (pgvector's way to filter what an
-- index-ordered scan found without walking the whole index).
WITH near AS MATERIALIZED (
    SELECT f.id, f.image_id, (f.embedding_dlib <-> $2::text::vector)::real AS distance,
           CASE WHEN fp.status = 'matched' THEN fp.person_id END AS person_id
    FROM facescan.faces f
    JOIN facescan.images i ON i.id = f.image_id
    LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
    WHERE i.library = $1 AND f.embedding_dlib IS NOT NULL
      AND (f.id <= $5 OR fp.status = 'matched')
      AND (f.track IS NULL OR NOT EXISTS (SELECT 1 FROM facescan.faces o
          WHERE o.image_id = f.image_id AND o.track = f.track AND o.id < f.id))
    ORDER BY f.embedding_dlib <-> $2::text::vector
    LIMIT $3
)
SELECT n.id AS face_id, n.image_id, n.distance, n.person_id
FROM near n
WHERE NOT $4::boolean OR n.person_id IS NOT NULL
ORDER BY n.distance, n.id;

-- name: cluster_neighbours_arcface
-- As cluster_neighbours_dlib, for ArcFace embeddings (cosine distance, 1 - cos).
WITH near AS MATERIALIZED (
    SELECT f.id, f.image_id, (f.embedding_arcface <=> $2::text::vector)::real AS distance,
           CASE WHEN fp.status = 'matched' THEN fp.person_id END AS person_id
    FROM facescan.faces f
    JOIN facescan.images i ON i.id = f.image_id
    LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
    WHERE i.library = $1 AND f.embedding_arcface IS NOT NULL
      AND (f.id <= $5 OR fp.status = 'matched')
      AND (f.track IS NULL OR NOT EXISTS (SELECT 1 FROM facescan.faces o
          WHERE o.image_id = f.image_id AND o.track = f.track AND o.id < f.id))
    ORDER BY f.embedding_arcface <=> $2::text::vector
    LIMIT $3
)
SELECT n.id AS face_id, n.image_id, n.distance, n.person_id
FROM near n
WHERE NOT $4::boolean OR n.person_id IS NOT NULL
ORDER BY n.distance, n.id;

-- name: image_labels
-- The people holding a face of image $1 (matched or pending: one face per photo each).
SELECT DISTINCT fp.person_id
FROM facescan.faces f
JOIN facescan.face_people fp ON fp.face_id = f.id
WHERE f.image_id = $1 AND fp.person_id IS NOT NULL;

-- name: new_unnamed
INSERT INTO facescan.people (library) VALUES ($1) RETURNING id;

-- name: cluster_assign
-- Faces $1 go to people $2 (automatic, matched, distance $3) when nobody has them, the
-- user did not take them from that person, and the person has no face of their photo
-- yet. Returns the faces assigned.
INSERT INTO facescan.face_people AS fp (face_id, image_id, person_id, source, status, distance)
SELECT r.face_id, f.image_id, r.person_id, 'automatic', 'matched', r.distance
FROM unnest($1::bigint[], $2::bigint[], $3::real[]) AS r(face_id, person_id, distance)
JOIN facescan.faces f ON f.id = r.face_id
WHERE NOT EXISTS (SELECT 1 FROM facescan.face_rejections x
                  WHERE x.face_id = r.face_id AND x.person_id = r.person_id)
  AND NOT EXISTS (SELECT 1 FROM facescan.face_people o
                  WHERE o.person_id = r.person_id AND o.image_id = f.image_id)
ON CONFLICT (face_id) DO UPDATE
SET person_id = EXCLUDED.person_id, source = EXCLUDED.source, status = EXCLUDED.status,
    distance = EXCLUDED.distance, assigned_at = now()
WHERE fp.person_id IS NULL
RETURNING fp.face_id;

-- name: dissolve_small
-- Unnamed people of $1 left with fewer than $2 faces: deleted, their faces nobody's again.
DELETE FROM facescan.people p
WHERE p.id = ANY($1::bigint[]) AND p.name IS NULL
  AND (SELECT count(*) FROM facescan.face_people fp WHERE fp.person_id = p.id) < $2
RETURNING p.id;

-- name: drop_empty_unnamed
-- Unnamed people of library $1 without a face (emptied by a re-cluster, moves, rescans).
DELETE FROM facescan.people p
WHERE p.library = $1 AND p.name IS NULL
  AND NOT EXISTS (SELECT 1 FROM facescan.face_people fp WHERE fp.person_id = p.id)
RETURNING p.id;

-- name: set_featured
-- Person $1[k]'s featured face becomes $2[k] (a cluster's representative).
UPDATE facescan.people p SET featured_face = r.face_id, updated_at = now()
FROM unnest($1::bigint[], $2::bigint[]) AS r(person_id, face_id)
WHERE p.id = r.person_id AND p.featured_face IS DISTINCT FROM r.face_id;

-- name: refeature
-- People of library $1 whose featured face is not theirs (none, moved, removed): their
-- first face the user gave, else their nearest matched one.
UPDATE facescan.people p
SET featured_face = (SELECT fp.face_id FROM facescan.face_people fp
                     WHERE fp.person_id = p.id
                     ORDER BY fp.status, fp.source <> 'user', fp.distance NULLS FIRST,
                              fp.face_id
                     LIMIT 1),
    updated_at = now()
WHERE p.library = $1
  AND NOT EXISTS (SELECT 1 FROM facescan.face_people fp
                  WHERE fp.face_id = p.featured_face AND fp.person_id = p.id)
  AND EXISTS (SELECT 1 FROM facescan.face_people fp WHERE fp.person_id = p.id);

-- name: count_held
-- How many of faces $1 someone has.
SELECT count(*)::integer FROM facescan.face_people
WHERE face_id = ANY($1::bigint[]) AND person_id IS NOT NULL;

-- name: library_embeddings
-- Every face of library $1 with a $2 embedding, with who has it: the full re-cluster's input.
SELECT f.id, f.image_id,
       CASE WHEN $2::text = 'dlib' THEN f.embedding_dlib::real[]
            ELSE f.embedding_arcface::real[] END AS embedding,
       fp.person_id, p.name IS NOT NULL AS named, fp.source::text AS source,
       fp.status::text AS status
FROM facescan.faces f
JOIN facescan.images i ON i.id = f.image_id
LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
LEFT JOIN facescan.people p ON p.id = fp.person_id
WHERE i.library = $1
  AND CASE WHEN $2::text = 'dlib' THEN f.embedding_dlib IS NOT NULL
           ELSE f.embedding_arcface IS NOT NULL END
  AND (f.track IS NULL OR NOT EXISTS (SELECT 1 FROM facescan.faces o
      WHERE o.image_id = f.image_id AND o.track = f.track AND o.id < f.id))
ORDER BY f.id;

-- name: library_rejections
-- (face, person) pairs the user took apart in library $1.
SELECT x.face_id, x.person_id
FROM facescan.face_rejections x
JOIN facescan.people p ON p.id = x.person_id
WHERE p.library = $1;

-- name: unassigned_faces
-- The faces of library $1 nobody has (clustering's noise, and faces never clustered); a
-- video's track once.
SELECT f.id AS face_id, i.path
FROM facescan.faces f
JOIN facescan.images i ON i.id = f.image_id
LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
WHERE i.library = $1 AND fp.person_id IS NULL
  AND (f.track IS NULL OR NOT EXISTS (SELECT 1 FROM facescan.faces o
      WHERE o.image_id = f.image_id AND o.track = f.track AND o.id < f.id))
ORDER BY i.path, f.box_left, f.box_top, f.id;

-- name: unnamed_count
SELECT count(*)::integer FROM facescan.people WHERE library = $1 AND name IS NULL;
