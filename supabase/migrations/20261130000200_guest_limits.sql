-- Guest checkouts are limited per event too, whatever their address.
--
-- Guests are limited per email (which a client may rotate) and per client address, which the functions
-- only know when the deployment names a trusted header (CLIENT_IP_HEADER; Supabase documents none). Without
-- an address, one client rotating emails was not limited at all. Now every event also takes at most
-- `guest_checkouts_per_event_per_minute` new guest checkouts a minute, all guests together (429
-- `rate-limited` with Retry-After, as the other limits; replays never count, signed-in buyers neither).
--
-- The limit is taken when a guest's order is inserted (a trigger), so begin_checkout itself is unchanged:
-- that insert happens in the same transaction, after begin_checkout's checks and tier locks, and a refused
-- checkout rolls back with its order, holds and hits, as before. Lock order stays the same for every
-- checkout (email and address buckets, then the tiers in id order, then the event's bucket): no deadlock.
alter table private.settings add column if not exists guest_checkouts_per_event_per_minute integer not null
  default 60 check (guest_checkouts_per_event_per_minute > 0);

create or replace function private.limit_guest_checkouts_per_event() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  perform private.take_rate_limit('event:' || new.event_id::text,
    (select s.guest_checkouts_per_event_per_minute from private.settings s));
  return new;
end
$$;
revoke execute on function private.limit_guest_checkouts_per_event() from public, anon, authenticated, service_role;

drop trigger if exists orders_guest_checkouts_per_event on events.orders;
create trigger orders_guest_checkouts_per_event before insert on events.orders
  for each row when (new.guest_email is not null) execute function private.limit_guest_checkouts_per_event();
