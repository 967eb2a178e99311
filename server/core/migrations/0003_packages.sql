-- kind: expand
-- Addon and dependency packages: stored once by content, installed on every instance.

CREATE TABLE package_blobs (
    sha256      text PRIMARY KEY,
    data        bytea NOT NULL,
    size        bigint NOT NULL,
    created_at  timestamptz DEFAULT now()
);

-- Zips are compressed already: storing them without another compression pass saves CPU on upload.
ALTER TABLE package_blobs ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE packages (
    name        text NOT NULL,
    version     text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('addon', 'dependency_package')),
    sha256      text NOT NULL REFERENCES package_blobs,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz DEFAULT now(),
    removed_at  timestamptz,
    PRIMARY KEY (name, version)
);

CREATE INDEX packages_sha256 ON packages (sha256);

-- One row per (instance, package): what that instance's installer did with it.
CREATE TABLE package_installs (
    instance_id      text NOT NULL,
    name             text NOT NULL,
    version          text NOT NULL,
    status           text CHECK (status IN ('pending', 'installed', 'failed', 'removed')),
    reason           text,
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    updated_at       timestamptz DEFAULT now(),
    PRIMARY KEY (instance_id, name, version)
);

CREATE INDEX package_installs_package ON package_installs (name, version);

-- Installers LISTEN here: any change to the package list wakes them at once.
CREATE FUNCTION ayon_notify_packages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ayon_packages', json_build_object(
        'name', NEW.name, 'version', NEW.version, 'active', NEW.active)::text);
    RETURN NEW;
END $$;

CREATE TRIGGER packages_notify AFTER INSERT OR UPDATE ON packages
    FOR EACH ROW EXECUTE FUNCTION ayon_notify_packages();
