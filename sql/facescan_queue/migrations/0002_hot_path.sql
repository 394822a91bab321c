-- Cheaper queue transitions at a million images.
--
-- 1. The index on images.lease_owner now serves the foreign key from images to leases
--    too. Deleting a lease (every release, every claim that found nothing) makes
--    PostgreSQL check that no image still references it with "WHERE lease_owner = $1",
--    which cannot use an index restricted to state = 'leased': it scanned the whole
--    images table (about 300 ms per lease at 1,000,000 images). "lease_owner IS NOT NULL"
--    holds for exactly the same rows (images_leased_has_owner) and is implied by
--    "lease_owner = $1". In start_next's order, so the next image of a lease is the
--    first live entry rather than a sort of the whole batch.
-- 2. size_class is no longer a generated column: every UPDATE of an image initialised
--    its generation expression (inlining the SQL function size_class) only to find that
--    width and height had not changed. register_images, the only writer of width and
--    height, stores it; the values already there are kept.
DROP INDEX facescan.images_leased;
CREATE INDEX images_leased ON facescan.images (lease_owner, priority DESC, attempts, id)
    WHERE lease_owner IS NOT NULL;

ALTER TABLE facescan.images ALTER COLUMN size_class DROP EXPRESSION;

INSERT INTO facescan.schema_version (version, description) VALUES (2, 'cheaper queue transitions');
