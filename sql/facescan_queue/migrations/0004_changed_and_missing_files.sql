-- A registration notices changed and vanished files (issue 14).
--
-- 1. images.file_mtime: the file's modification time when it was registered. With
--    file_bytes it tells a registration that a registered file changed (it is then
--    queued again from the first cascade step, its old result deleted). Images registered
--    before this migration have none: the next registration fills it in without redoing
--    them (unknown is not changed; a different size still is).
-- 2. images.missing_since: when a registration that walked the whole library root found
--    the file gone. A missing image is never claimed, keeps its result and is counted
--    apart (image_counts.missing); a registration that sees the file again unmarks it.
--    The runnable index leaves missing images out, so that a claim never walks past them.
-- 3. register_images returns what it did (added, changed, returned, deferred), and
--    status_counts the missing flag: both are dropped here and created by functions.sql.
-- Adding the columns rewrites no table (no default); the runnable index is rebuilt (it
-- holds pending images only).
ALTER TABLE facescan.images ADD COLUMN file_mtime timestamptz;
ALTER TABLE facescan.images ADD COLUMN missing_since timestamptz;

ALTER TABLE facescan.image_counts ADD COLUMN missing boolean NOT NULL DEFAULT false;
ALTER TABLE facescan.image_counts DROP CONSTRAINT image_counts_key;
ALTER TABLE facescan.image_counts ADD CONSTRAINT image_counts_key UNIQUE NULLS NOT DISTINCT
    (library, state, step, size_class, error_type, degraded, missing, shard);

DROP INDEX facescan.images_runnable;
CREATE INDEX images_runnable ON facescan.images
    (library, step, size_class, priority DESC, attempts, id)
    WHERE state = 'pending' AND missing_since IS NULL;

DROP FUNCTION IF EXISTS facescan.register_images(text, text[], integer[], integer[], bigint[], smallint);
DROP FUNCTION IF EXISTS facescan.status_counts(text);

INSERT INTO facescan.schema_version (version, description) VALUES (4, 'changed and missing files');
