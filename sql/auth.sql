-- Queries of the auth & user service (app/auth). Each block starts with `-- name: query_name`.

-- name: insert_user
INSERT INTO users (email, password_hash, display_name, role)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING id, email, display_name, role, disabled, base_currency, timezone, risk_tolerance, created_at

-- name: user_for_login
SELECT id, email, password_hash, role, disabled
FROM users WHERE lower(email) = lower($1)

-- name: user_by_id
SELECT id, email, display_name, role, disabled, base_currency, timezone, risk_tolerance, created_at
FROM users WHERE id = $1

-- name: password_hash_by_id
SELECT password_hash FROM users WHERE id = $1

-- name: update_profile
UPDATE users SET
    display_name   = CASE WHEN $2 THEN $3 ELSE display_name END,
    base_currency  = COALESCE($4, base_currency),
    timezone       = COALESCE($5, timezone),
    risk_tolerance = COALESCE($6, risk_tolerance),
    updated_at     = now()
WHERE id = $1
RETURNING id, email, display_name, role, disabled, base_currency, timezone, risk_tolerance, created_at

-- name: update_password
UPDATE users SET password_hash = $2, password_changed_at = now(), updated_at = now() WHERE id = $1

-- name: admin_update_user
UPDATE users SET
    role       = COALESCE($2, role),
    disabled   = COALESCE($3, disabled),
    updated_at = now()
WHERE id = $1
RETURNING id, email, display_name, role, disabled, base_currency, timezone, risk_tolerance, created_at

-- name: set_role_by_email
UPDATE users SET role = $2, updated_at = now() WHERE lower(email) = lower($1)
RETURNING id

-- name: delete_user
DELETE FROM users WHERE id = $1

-- name: list_users
SELECT id, email, display_name, role, disabled, base_currency, timezone, risk_tolerance, created_at
FROM users
ORDER BY created_at, id
LIMIT $1 OFFSET $2

-- name: count_users
SELECT count(*) FROM users

-- name: insert_session
INSERT INTO sessions (id, user_id, refresh_hash, user_agent, ip, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))

-- name: session_state
SELECT s.user_id, u.email, u.role, u.disabled, s.revoked_at IS NOT NULL AS revoked,
       extract(epoch FROM s.expires_at)::float8 AS expires_at
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = $1

-- name: session_for_refresh
SELECT s.id, s.user_id, s.revoked_at, s.expires_at <= now() AS expired, u.email, u.role, u.disabled
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.refresh_hash = $1
FOR UPDATE OF s

-- name: rotate_refresh
UPDATE sessions SET refresh_hash = $2, last_used_at = now(), user_agent = COALESCE($3, user_agent),
                    ip = COALESCE($4, ip)
WHERE id = $1

-- name: insert_used_refresh
INSERT INTO used_refresh_tokens (token_hash, session_id) VALUES ($1, $2) ON CONFLICT DO NOTHING

-- name: used_refresh_session
SELECT session_id FROM used_refresh_tokens WHERE token_hash = $1

-- name: revoke_session
UPDATE sessions SET revoked_at = now(), revoked_reason = $2
WHERE id = $1 AND revoked_at IS NULL
RETURNING id, user_id

-- name: revoke_own_session
UPDATE sessions SET revoked_at = now(), revoked_reason = $3
WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > now()
RETURNING id

-- name: revoke_user_sessions
UPDATE sessions SET revoked_at = now(), revoked_reason = $2
WHERE user_id = $1 AND revoked_at IS NULL
RETURNING id

-- name: revoke_user_sessions_except
UPDATE sessions SET revoked_at = now(), revoked_reason = $3
WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL
RETURNING id

-- name: user_session_ids
SELECT id FROM sessions WHERE user_id = $1

-- name: list_sessions
SELECT id, created_at, last_used_at, user_agent, ip
FROM sessions
WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
ORDER BY last_used_at DESC

-- name: purge_old_sessions
DELETE FROM sessions
WHERE (revoked_at IS NOT NULL AND revoked_at < now() - make_interval(secs => $1))
   OR expires_at < now() - make_interval(secs => $1)

-- name: live_session_ids
SELECT id FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()

-- name: current_role
SELECT role FROM users WHERE id = $1 AND NOT disabled

-- name: session_states
SELECT s.id, s.user_id, u.email, u.role, u.disabled, s.revoked_at IS NOT NULL AS revoked,
       extract(epoch FROM s.expires_at)::float8 AS expires_at
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = ANY($1::uuid[])

-- name: rehash_password
UPDATE users SET password_hash = $2 WHERE id = $1

-- name: record_session_activity
-- $1 session ids, $2 when each was last seen (app/auth/activity.py)
UPDATE sessions AS s SET last_used_at = GREATEST(s.last_used_at, v.seen_at)
FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, seen_at)
WHERE s.id = v.id
