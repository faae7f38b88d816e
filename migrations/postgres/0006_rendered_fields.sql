-- The arguments a try ran with, after templates were rendered (secrets masked), shown
-- by the web UI's try page and the API's `rendered_fields`. NULL: nothing was templated.
ALTER TABLE task_try ADD COLUMN rendered_fields TEXT;
