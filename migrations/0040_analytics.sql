-- Analytics: per-user insight thresholds. Only the user's overrides are stored (a JSON object shaped like
-- app.analytics.insights.InsightThresholds); defaults fill in the rest when it is read.
CREATE TABLE analytics_insight_settings (
    user_id     uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    thresholds  jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(thresholds) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
