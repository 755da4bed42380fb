-- Demo fixtures with fixed ids (README, "Demo fixtures"). Safe to run again: nothing is duplicated.
insert into auth.users (id, email) values
  ('11111111-1111-4111-8111-111111111111', 'organiser@example.com'),
  ('22222222-2222-4222-8222-222222222222', 'buyer@example.com'),
  ('66666666-6666-4666-8666-666666666666', 'stranger@example.com')
on conflict (id) do nothing;
