-- A library's max dimension is kept with its cascade in the library row (issue 14), where
-- the detector reads its step: start_next returns it with each image, so a worker needs
-- no --max-dimension of its own, and a FaceScan's spec.maxDimension or `facescan scan
-- --max-dimension` reaches its detectors through the database alone. 0: no cap.
ALTER TABLE facescan.libraries
    ADD COLUMN max_dimension integer NOT NULL DEFAULT 1280 CHECK (max_dimension >= 0);

-- their results gain max_dimension (and ensure_library a parameter): functions.sql
-- creates them again
DROP FUNCTION IF EXISTS facescan.complete_and_start_next(
    bigint, text, integer, integer, integer, integer, jsonb);
DROP FUNCTION IF EXISTS facescan.start_next(text);
DROP FUNCTION IF EXISTS facescan.start_unstarted(text);
DROP FUNCTION IF EXISTS facescan.ensure_library(
    text, text[], real[], integer, real, integer, integer);

INSERT INTO facescan.schema_version (version, description) VALUES (6, 'library max dimension');
