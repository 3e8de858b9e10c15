-- The credential split out of an environment's repository URL
-- (`https://user:TOKEN@host/…`), sealed like `secrets_json` ('{}' when the
-- URL carried none). `repo` keeps the URL without it. Rows written before
-- this column existed are split and sealed when a store opens with a key.
ALTER TABLE environments ADD COLUMN repo_credential TEXT NOT NULL DEFAULT '{}';
