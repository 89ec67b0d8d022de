-- Gatehouse 005: seed 003's domain — birds, their weights and vet visits.
-- Every row belongs to one workspace through its bird; the unique constraints decide the
-- seed's 409s, so two racing requests cannot both win.
CREATE TABLE birds (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  workspace_id integer NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  tag_id text CHECK (length(tag_id) BETWEEN 1 AND 100),
  species text CHECK (length(species) <= 200),
  date_of_birth date,
  gotcha_day date,
  chart_color text NOT NULL DEFAULT '#cb3a35' CHECK (chart_color ~ '^#[0-9A-Fa-f]{6}$'),
  photo_data_url text,
  notify_on_dob boolean NOT NULL DEFAULT false,
  notify_on_gotcha_day boolean NOT NULL DEFAULT false,
  created_by uuid REFERENCES users (id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX birds_tag_key ON birds (workspace_id, tag_id);
CREATE INDEX birds_workspace_idx ON birds (workspace_id, created_at, id);

CREATE TABLE bird_weights (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  bird_id uuid NOT NULL REFERENCES birds (id) ON DELETE CASCADE,
  weight_grams double precision NOT NULL CHECK (weight_grams > 0 AND weight_grams <= 10000),
  recorded_on date NOT NULL,
  notes text CHECK (length(notes) <= 2000),
  created_by uuid REFERENCES users (id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT bird_weights_one_per_day UNIQUE (bird_id, recorded_on)
);

CREATE TABLE vet_visits (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  bird_id uuid NOT NULL REFERENCES birds (id) ON DELETE CASCADE,
  visited_on date NOT NULL,
  clinic_name text CHECK (length(clinic_name) <= 200),
  reason text CHECK (length(reason) <= 500),
  notes text CHECK (length(notes) <= 2000),
  created_by uuid REFERENCES users (id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vet_visits_bird_idx ON vet_visits (bird_id, visited_on DESC, id);

-- Transfer drafts (seed 003): a bird offered to another owner by e-mail, accepted later by
-- that person into a workspace of theirs (the bird moves with its weights and visits).
CREATE TABLE transfers (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  bird_id uuid NOT NULL REFERENCES birds (id) ON DELETE CASCADE,
  source_workspace_id integer NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
  destination_email text NOT NULL CHECK (destination_email = lower(btrim(destination_email)) AND destination_email <> ''),
  notes text CHECK (length(notes) <= 2000),
  status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'cancelled')),
  created_by uuid REFERENCES users (id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  accepted_at timestamptz,
  accepted_by uuid REFERENCES users (id) ON DELETE SET NULL,
  destination_workspace_id integer REFERENCES workspaces (id) ON DELETE SET NULL
);
-- One open draft per bird and destination: drafting again updates it.
CREATE UNIQUE INDEX transfers_pending_key ON transfers (bird_id, destination_email) WHERE status = 'pending';
CREATE INDEX transfers_destination_idx ON transfers (destination_email) WHERE status = 'pending';
CREATE INDEX transfers_source_idx ON transfers (source_workspace_id, created_at);
