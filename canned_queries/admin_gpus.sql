-- title: GPUs, one page (admin)
-- description: For /admin's GPU list (issue 24 item 3): the GPUs whose server name, "gpu <index>", model, PCI bus id or status (active, maintenance, fault; "lost" for a GPU missing from its server's newest report) contains :q (any case; empty: every GPU), by server name and index, :limit rows (1 to 500, default 50) from :offset (default 0). total is the number of matches.
-- admin: true
with params as (
  select lower(coalesce(:q, '')) as q,
    min(500, max(1, cast(coalesce(nullif(:limit, ''), 50) as integer))) as page_size,
    max(0, cast(coalesce(nullif(:offset, ''), 0) as integer)) as page_start
),
matches as (
  select g.id, g.server_id, coalesce(s.display_name, s.hostname) as server
  from servers s
  join gpus g on g.server_id = s.id
  join params p
  where p.q = '' or instr(lower(coalesce(s.display_name, s.hostname) || ' gpu ' || g.gpu_index || ' ' || coalesce(g.name, '')
                                || ' ' || coalesce(g.pci_bus_id, '') || ' ' || g.status
                                || case when g.present then '' else ' lost' end), p.q) > 0
)
select
  g.server_id,
  m.server,
  g.id as gpu_id,
  g.gpu_index,
  g.name,
  g.pci_bus_id,
  g.present,
  g.status as admin_status,
  g.status_note,
  (select count(*) from matches) as total
from matches m
join gpus g on g.id = m.id
order by natural_key(m.server), g.server_id, g.gpu_index
limit (select page_size from params) offset (select page_start from params)
