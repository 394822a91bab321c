-- facescan people merge / move / remove / undo / suggest: the user's corrections, by
-- name (facescan_people.queries). Each writer runs in the library's matching lock and
-- logs what reverses it in facescan.people_actions.

-- name: person_by_id
-- Person $1 (in library $2, or in any when NULL).
SELECT id, library, name, hidden, featured_face FROM facescan.people
WHERE id = $1 AND ($2::text IS NULL OR library = $2);

-- name: person_row
-- Everything about person $1 that deleting it loses (for undo).
SELECT id, library, name, hidden, featured_face, created_at::text AS created_at
FROM facescan.people WHERE id = $1;

-- name: faces_info
-- Faces $1: their image, library and path, and who has them (no row: never considered).
SELECT f.id AS face_id, f.image_id, i.library, i.path, fp.face_id IS NOT NULL AS considered,
       fp.person_id, p.name AS person_name, fp.source::text AS source,
       fp.status::text AS status, fp.distance
FROM facescan.faces f
JOIN facescan.images i ON i.id = f.image_id
LEFT JOIN facescan.face_people fp ON fp.face_id = f.id
LEFT JOIN facescan.people p ON p.id = fp.person_id
WHERE f.id = ANY($1::bigint[])
ORDER BY f.id;

-- name: photo_clashes
-- Photos where person $1 and person $2 both have a face: merging them would put two
-- faces of one photo in one person.
SELECT i.library, i.path, a.face_id AS face_a, b.face_id AS face_b
FROM facescan.face_people a
JOIN facescan.face_people b ON b.image_id = a.image_id AND b.person_id = $2
JOIN facescan.images i ON i.id = a.image_id
WHERE a.person_id = $1
ORDER BY i.path, a.face_id;

-- name: holders_in_images
-- The faces person $1 has in images $2.
SELECT fp.face_id, fp.image_id
FROM facescan.face_people fp
WHERE fp.person_id = $1 AND fp.image_id = ANY($2::bigint[]);

-- name: person_rows
-- Person $1's rows of face_people.
SELECT face_id, image_id, source::text AS source, status::text AS status, distance
FROM facescan.face_people WHERE person_id = $1 ORDER BY face_id;

-- name: person_rejections
SELECT face_id FROM facescan.face_rejections WHERE person_id = $1 ORDER BY face_id;

-- name: merge_faces
-- Person $2's faces become person $1's, as they were (source, status, distance).
UPDATE facescan.face_people SET person_id = $1, assigned_at = now() WHERE person_id = $2;

-- name: copy_rejections
-- Person $2's rejected faces become rejected for person $1 too; the faces added.
INSERT INTO facescan.face_rejections (face_id, person_id)
SELECT face_id, $1 FROM facescan.face_rejections WHERE person_id = $2
ON CONFLICT DO NOTHING
RETURNING face_id;

-- name: delete_person
DELETE FROM facescan.people WHERE id = $1;

-- name: name_person
-- Sets person $1's name ($2 NULL: unnamed again).
UPDATE facescan.people SET name = $2, updated_at = now() WHERE id = $1;

-- name: restore_person
-- Makes a deleted person again with its id and what it had.
INSERT INTO facescan.people (id, library, name, hidden, featured_face, created_at)
OVERRIDING SYSTEM VALUE
SELECT $1, $2, $3, $4, (SELECT id FROM facescan.faces WHERE id = $5), $6::text::timestamptz;

-- name: set_rows
-- Writes the rows of faces $1 (images $2) as given: person $3 (NULL: nobody's), source
-- $4, status $5, distance $6; what the user asks, or what undoing it restores.
INSERT INTO facescan.face_people (face_id, image_id, person_id, source, status, distance)
SELECT r.face_id, r.image_id, r.person_id, r.source::facescan.person_source,
       r.status::facescan.person_status, r.distance
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::real[])
     AS r(face_id, image_id, person_id, source, status, distance)
JOIN facescan.faces f ON f.id = r.face_id
ON CONFLICT (face_id) DO UPDATE
SET person_id = EXCLUDED.person_id, source = EXCLUDED.source, status = EXCLUDED.status,
    distance = EXCLUDED.distance, assigned_at = now();

-- name: delete_rows
-- Faces $1 back to never considered (what undo restores for a face that had no row).
DELETE FROM facescan.face_people WHERE face_id = ANY($1::bigint[]);

-- name: reject
-- Faces $1 are not person $2[k]'s: automatic matching and clustering leave them alone.
-- The pairs added.
INSERT INTO facescan.face_rejections (face_id, person_id)
SELECT r.face_id, r.person_id
FROM unnest($1::bigint[], $2::bigint[]) AS r(face_id, person_id)
JOIN facescan.faces f ON f.id = r.face_id
JOIN facescan.people p ON p.id = r.person_id
ON CONFLICT DO NOTHING
RETURNING face_id, person_id;

-- name: unreject
DELETE FROM facescan.face_rejections x
USING unnest($1::bigint[], $2::bigint[]) AS r(face_id, person_id)
WHERE x.face_id = r.face_id AND x.person_id = r.person_id
RETURNING x.face_id, x.person_id;

-- name: log_action
INSERT INTO facescan.people_actions (library, action, summary, undo)
VALUES ($1, $2::text::facescan.people_action, $3, $4::text::jsonb)
RETURNING id;

-- name: undoable_libraries
-- The libraries with an action not undone yet, of $1 only when given.
SELECT DISTINCT library FROM facescan.people_actions
WHERE undone_at IS NULL AND ($1::text IS NULL OR library = $1)
ORDER BY library;

-- name: last_action
-- Library $1's newest action not undone yet.
SELECT id, action::text AS action, summary, undo::text AS undo
FROM facescan.people_actions
WHERE library = $1 AND undone_at IS NULL
ORDER BY id DESC
LIMIT 1;

-- name: mark_undone
UPDATE facescan.people_actions SET undone_at = now() WHERE id = $1;

-- name: suggest
-- People of library $2 nearest person $1: for each of $1's first $3 reference faces, its
-- $4 nearest reference faces of other people through its model's index; per person the
-- nearest pair and how many of the pairs found are theirs, nearest first, $5 at most.
WITH refs AS MATERIALIZED (
    SELECT f.id, f.embedding_dlib, f.embedding_arcface
    FROM facescan.face_people fp
    JOIN facescan.faces f ON f.id = fp.face_id
    WHERE fp.person_id = $1 AND fp.status = 'matched'
    ORDER BY fp.source <> 'user', fp.distance NULLS FIRST, f.id
    LIMIT $3
), near AS (
    SELECT n.person_id, n.distance
    FROM refs r
    CROSS JOIN LATERAL (
        (SELECT fp.person_id, (o.embedding_dlib <-> r.embedding_dlib)::real AS distance
         FROM facescan.faces o
         JOIN facescan.face_people fp ON fp.face_id = o.id AND fp.status = 'matched'
         JOIN facescan.people p ON p.id = fp.person_id AND p.library = $2
         WHERE r.embedding_dlib IS NOT NULL AND o.embedding_dlib IS NOT NULL
           AND fp.person_id <> $1
         ORDER BY o.embedding_dlib <-> r.embedding_dlib
         LIMIT $4)
        UNION ALL
        (SELECT fp.person_id, (o.embedding_arcface <=> r.embedding_arcface)::real AS distance
         FROM facescan.faces o
         JOIN facescan.face_people fp ON fp.face_id = o.id AND fp.status = 'matched'
         JOIN facescan.people p ON p.id = fp.person_id AND p.library = $2
         WHERE r.embedding_arcface IS NOT NULL AND o.embedding_arcface IS NOT NULL
           AND fp.person_id <> $1
         ORDER BY o.embedding_arcface <=> r.embedding_arcface
         LIMIT $4)
    ) n
)
SELECT p.id, p.name, min(near.distance)::real AS distance, count(*)::integer AS pairs,
       (SELECT count(*) FROM facescan.face_people fp
        WHERE fp.person_id = p.id AND fp.status = 'matched')::integer AS faces
FROM near
JOIN facescan.people p ON p.id = near.person_id
GROUP BY p.id, p.name
ORDER BY min(near.distance), p.id
LIMIT $5;
