-- Demo fixtures with fixed ids (README, "Demo fixtures"). Safe to run again: nothing is duplicated.
insert into auth.users (id, email) values
  ('11111111-1111-4111-8111-111111111111', 'organiser@example.com'),
  ('22222222-2222-4222-8222-222222222222', 'buyer@example.com'),
  ('66666666-6666-4666-8666-666666666666', 'stranger@example.com')
on conflict (id) do nothing;

-- The demo event, on sale and starting 90 days after the seed ran, with two tiers.
insert into events.events (id, organiser_id, title, currency, starts_at, on_sale) values
  ('33333333-3333-4333-8333-333333333333', '11111111-1111-4111-8111-111111111111', 'Demo Night', 'usd',
   now() + interval '90 days', true)
on conflict (id) do nothing;

insert into events.ticket_tiers (id, event_id, name, price_cents, capacity, max_per_order) values
  ('44444444-4444-4444-8444-444444444444', '33333333-3333-4333-8333-333333333333', 'GA', 2500, 1000, 10),
  ('55555555-5555-4555-8555-555555555555', '33333333-3333-4333-8333-333333333333', 'VIP', 10000, 50, 4)
on conflict (id) do nothing;

-- The organiser's Stripe connected account, payouts enabled.
insert into events.payout_accounts (organiser_id, stripe_account_id, payouts_enabled) values
  ('11111111-1111-4111-8111-111111111111', 'acct_demo_organizer', true)
on conflict (organiser_id) do nothing;

-- The demo operator: a platform admin (app_metadata.role, which Auth puts in the user's tokens), for the
-- web app's operator page.
insert into auth.users (id, email, raw_app_meta_data) values
  ('77777777-7777-4777-8777-777777777777', 'operator@example.com', '{"role": "platform_admin"}')
on conflict (id) do nothing;
