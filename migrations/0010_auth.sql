-- Auth & users: accounts, login sessions (one per login = one refresh-token family), rotated refresh tokens.

CREATE TABLE users (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    email               text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash       text        NOT NULL,
    role                text        NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    disabled            boolean     NOT NULL DEFAULT false,
    display_name        text        CHECK (display_name IS NULL OR length(display_name) <= 100),
    base_currency       text        NOT NULL DEFAULT 'USD' CHECK (base_currency ~ '^[A-Z]{3}$'),
    timezone            text        NOT NULL DEFAULT 'UTC',
    risk_tolerance      text        NOT NULL DEFAULT 'moderate'
                                    CHECK (risk_tolerance IN ('conservative', 'moderate', 'aggressive')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now()
);
-- Email is unique case-insensitively (the application also stores it lower-cased).
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
CREATE INDEX users_created_at_idx ON users (created_at, id);

-- A session is one login: the family of refresh tokens that descend from it. Its id is the `sid`
-- claim of every access token issued for it, so ending the session ends them all.
CREATE TABLE sessions (
    id              uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    refresh_hash    bytea       NOT NULL UNIQUE,          -- SHA-256 of the current refresh token
    user_agent      text,
    ip              text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    revoked_reason  text
);
CREATE INDEX sessions_user_live_idx ON sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

-- Refresh tokens already rotated away: presenting one again is reuse, and revokes its family.
CREATE TABLE used_refresh_tokens (
    token_hash  bytea       PRIMARY KEY,
    session_id  uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    used_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX used_refresh_tokens_session_idx ON used_refresh_tokens (session_id);
