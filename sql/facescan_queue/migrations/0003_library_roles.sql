-- Library roles, and `unavailable` failures charged after a bound.
--
-- 1. facescan.library_roles: the libraries a database role may use through the queue's
--    functions (`facescan db grant --role ROLE --library NAME [--operator]`). The
--    functions the clients call become SECURITY DEFINER (functions.sql) and each refuses
--    a library the session's role is not granted, so a detector's role needs no table
--    privilege and cannot read or write another library's rows. Roles granted every
--    privilege on the tables (the GRANTs facescan advised before) keep every library.
-- 2. An image whose every attempt fails `unavailable` (an I/O error on that one file)
--    while other images of its library succeed retried for ever, adding an attempt row
--    each time. images.unavailable_count counts those failures (only while others
--    succeed, so an outage costs nothing); beyond libraries.unavailable_grace of them
--    each is charged like any other failure, up to dead. Adding the columns rewrites no
--    table (constant defaults; no CHECK on images, which would scan it).
ALTER TABLE facescan.libraries
    ADD COLUMN unavailable_grace integer NOT NULL DEFAULT 5 CHECK (unavailable_grace >= 0);

ALTER TABLE facescan.images ADD COLUMN unavailable_count smallint NOT NULL DEFAULT 0;

CREATE TABLE facescan.library_roles (
    role text NOT NULL CHECK (role <> ''),
    library text NOT NULL CHECK (library <> ''),
    operator boolean NOT NULL DEFAULT false,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, library)
);

INSERT INTO facescan.schema_version (version, description) VALUES (3, 'library roles');
