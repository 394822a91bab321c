-- People: faces matched to known people (issue "People", first step).
--
-- 1. facescan.people_settings: each library's thresholds, one row per library made by
--    the first people command that needs it (the defaults below, per embedding model).
-- 2. facescan.people: the known people of a library (name unique per library).
-- 3. facescan.face_people: one row per face that matching has considered, and what it
--    decided: the person (NULL: nobody near enough), how (automatic, user, import), the
--    distance and the band (matched, pending). A face without a row is new to matching
--    (`facescan people sync` considers it). Never two faces of one photo in one person.
-- Nothing existing changes: new types and tables only. Roles granted every privilege on
-- the queue's tables (the GRANTs facescan advises) get the same on the new ones; roles
-- granted libraries (`facescan db grant`) get none, as for the queue's tables.
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
    name text NOT NULL CONSTRAINT people_name_valid
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

INSERT INTO facescan.schema_version (version, description) VALUES (5, 'people');
