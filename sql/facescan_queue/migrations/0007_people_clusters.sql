-- People's clusters (issue "People", second step): unknown faces that cluster together
-- become *unnamed people*, and the user's corrections are kept and can be undone.
--
-- 1. facescan.people.name may be NULL: a person made by `facescan people cluster`, shown
--    as "unnamed #<id>" until renamed. The unique (library, name) constraint treats NULLs
--    as distinct, so it still holds among named people only; people_name_valid still
--    checks every name given. Every other constraint keeps its meaning: never two faces
--    of one photo in one person (face_people_one_face_per_photo), named or not.
-- 2. facescan.face_rejections: a face the user took from a person (`people remove`):
--    automatic matching and clustering never give it to that person again.
-- 3. facescan.people_actions: the log of the user's merges, moves and removals, each
--    with what undoing it needs (`people undo` reverses the last one of a library).
-- Roles granted every privilege on the queue's tables get the same on the new ones, as
-- in migration 5.
ALTER TABLE facescan.people ALTER COLUMN name DROP NOT NULL;

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

INSERT INTO facescan.schema_version (version, description) VALUES (7, 'people clusters');
