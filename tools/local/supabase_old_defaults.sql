-- The default privileges of Supabase projects before the Data API change (supabase.com/changelog/45329,
-- applied to every project from 2026-10-30): what postgres created in public was reachable by the API
-- roles unless revoked. A database prepared with them checks that the migrations revoke what they must
-- on an older project too.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
