-- Videos (issue 17): a video file is one queue item like a photo (leased, retried,
-- failed with a typed reason, committed once). Its result is the faces of a few frames
-- sampled over its duration, each face with its frame's timestamp, committed in one
-- transaction: a worker killed mid-video leaves the whole video to be redone.
--   images.kind          'image' (every row so far) or 'video'
--   images.duration_ms   a video's duration from its container header (NULL: a photo,
--                        or a container that does not say)
--   faces.frame_ms       the timestamp of the frame a video's face was found in
--                        (NULL for a photo's faces)
--   faces.track          faces of one video that are one person across its frames share
--                        a track number (per video, from 0); NULL for a photo's faces
--   detections.frames    the timestamps (ms) of the frames sampled (NULL for a photo):
--                        frames without faces are known too
--   libraries.frames_per_video     frames sampled per video (default 5: at 1/6 ... 5/6)
--   libraries.min_frame_spacing_s  fewer frames where they would be closer than this
-- Width and height of a video are its frames' (as stored): it sizes like a photo of
-- that size. Nothing existing changes meaning.
CREATE TYPE facescan.media_kind AS ENUM ('image', 'video');

ALTER TABLE facescan.libraries
    ADD COLUMN frames_per_video integer NOT NULL DEFAULT 5
        CHECK (frames_per_video BETWEEN 1 AND 100),
    ADD COLUMN min_frame_spacing_s real NOT NULL DEFAULT 0 CHECK (min_frame_spacing_s >= 0);

ALTER TABLE facescan.images
    ADD COLUMN kind facescan.media_kind NOT NULL DEFAULT 'image',
    ADD COLUMN duration_ms integer CHECK (duration_ms >= 0);
-- A library's videos, for status (counted apart from photos, O(videos))
CREATE INDEX images_videos ON facescan.images (library, state) WHERE kind = 'video';

ALTER TABLE facescan.faces
    ADD COLUMN frame_ms integer CHECK (frame_ms >= 0),
    ADD COLUMN track smallint CHECK (track >= 0);

ALTER TABLE facescan.detections ADD COLUMN frames integer[];

-- their parameters or results change (functions.sql creates them again)
DROP FUNCTION IF EXISTS facescan.ensure_library(
    text, text[], real[], integer, real, integer, integer, integer);
DROP FUNCTION IF EXISTS facescan.register_images(
    text, text[], integer[], integer[], bigint[], smallint, timestamptz[]);
DROP FUNCTION IF EXISTS facescan.complete_and_start_next(
    bigint, text, integer, integer, integer, integer, jsonb);
DROP FUNCTION IF EXISTS facescan.complete_image(
    bigint, text, integer, integer, integer, integer, jsonb);
DROP FUNCTION IF EXISTS facescan.commit_result(
    bigint, text, integer, integer, integer, integer, jsonb);
DROP FUNCTION IF EXISTS facescan.start_next(text);
DROP FUNCTION IF EXISTS facescan.start_unstarted(text);
DROP FUNCTION IF EXISTS facescan.image_by_path(text, text);
DROP FUNCTION IF EXISTS facescan.faces_of_image(bigint);

INSERT INTO facescan.schema_version (version, description) VALUES (9, 'videos');
