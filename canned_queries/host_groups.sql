-- title: Host groups
-- description: The host groups of the servers you may see, by name: grp, servers (how many of your servers are in it; any source: agent config, Slurm partition, admin), in_scope 1. With :group set to a name that is not among them, one more row tells why: in_scope 0 and servers null when the group exists but none of its servers is yours, no row when no group has that name (the /free page says "no host group named …" or "not in your scope").
select grp, count(distinct server_id) as servers, 1 as in_scope
from server_groups
where (:_scope_all or server_id in (select value from json_each(:_scope_servers)))
group by grp
union all
select :group as grp, null as servers, 0 as in_scope
where coalesce(:group, '') != ''
  and exists (select 1 from server_groups where grp = :group)
  and not exists (select 1 from server_groups where grp = :group
                  and (:_scope_all or server_id in (select value from json_each(:_scope_servers))))
order by in_scope desc, grp
