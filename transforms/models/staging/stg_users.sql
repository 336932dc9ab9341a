select
    user_id,
    age,
    upper(gender) as gender,
    occupation,
    zip,
    coalesce(attributes, '{}')::json as attributes
from {{ source('raw', 'users') }}
