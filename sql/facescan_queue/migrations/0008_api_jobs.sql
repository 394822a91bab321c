-- API jobs (issue 16): one row per job of `facescan serve`'s POST /process.
--
-- A job's media is fetched (a URL) or copied (a path) into the API library's root and
-- registered there as an image like any other, so the queue leases, retries and never
-- loses it; the job's state is its image's (pending, leased, done, dead), never kept
-- twice. A job whose media could not be fetched has no image and says why (error_type,
-- error). With a callback URL, the settled result is owed to it until a delivery is
-- acknowledged (a 2xx answer): attempts, when the next one is due, when one was
-- acknowledged (once: never set again) and the last delivery error.
-- Nothing existing changes. Roles granted every privilege on the queue's tables (the
-- GRANTs facescan advises) get the same on the new one, as in migration 5.
CREATE TABLE facescan.api_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    library text NOT NULL REFERENCES facescan.libraries (name) ON DELETE CASCADE,
    job_id text NOT NULL CHECK (job_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    media_id text NOT NULL CHECK (media_id <> ''),
    media_url text,
    media_path text,
    callback_url text,
    image_id bigint UNIQUE REFERENCES facescan.images (id) ON DELETE SET NULL,
    error_type text CHECK (error_type IN ('download_failed')),
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivery_attempts integer NOT NULL DEFAULT 0 CHECK (delivery_attempts >= 0),
    next_delivery_at timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    last_delivery_error text,
    CONSTRAINT api_jobs_library_job_key UNIQUE (library, job_id),
    CONSTRAINT api_jobs_one_source CHECK (num_nonnulls(media_url, media_path) = 1),
    CONSTRAINT api_jobs_image_or_error CHECK (error_type IS NULL OR image_id IS NULL),
    CONSTRAINT api_jobs_acknowledged_callback
        CHECK (acknowledged_at IS NULL OR callback_url IS NOT NULL)
);
-- The deliveries still owed, in the order they fall due.
CREATE INDEX api_jobs_undelivered ON facescan.api_jobs (library, next_delivery_at)
    WHERE callback_url IS NOT NULL AND acknowledged_at IS NULL;

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
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON facescan.api_jobs TO %I',
                       v_role);
    END LOOP;
END
$$;

INSERT INTO facescan.schema_version (version, description) VALUES (8, 'api jobs');
