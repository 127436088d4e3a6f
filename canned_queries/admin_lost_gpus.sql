-- title: Lost GPUs (admin)
-- description: GPUs missing from their server's newest complete report (present = 0) and not yet marked removed, by server name and index, at most 500: each stays a lost cell on the dashboard until an admin marks it removed (admin_remove_gpu).
-- admin: true
select g.id, g.server_id, coalesce(s.display_name, s.hostname) as server, g.gpu_index, g.name, g.pci_bus_id, g.last_ts
from gpus g
join servers s on s.id = g.server_id
where not g.present and g.removed_at is null
order by s.name_key, g.server_id, g.gpu_index
limit 500
