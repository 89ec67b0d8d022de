-- Gatehouse 003: sign-in identities at external providers (Google, Microsoft, Apple, OIDC).
-- An identity is keyed by (provider, subject), never by e-mail: addresses change and can be
-- reassigned; an account is linked by e-mail only when the provider says it is verified.
CREATE TABLE user_identities (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  provider text NOT NULL,
  subject text NOT NULL,
  email text,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT user_identities_provider_subject_key UNIQUE (provider, subject)
);
CREATE INDEX user_identities_user_idx ON user_identities (user_id);
