//! The fleet's [`Table`] on DynamoDB: each operation one SDK call, bounded
//! by [`CALL_TIMEOUT`], its conditions and updates written as expressions.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, PutRequest, ReturnValue, WriteRequest,
};
use aws_sdk_dynamodb::Client;

use super::table::{Call, Change, Condition, Item, Key, Returns, Table, Update};
use super::{StateError, CALL_TIMEOUT};

/// One DynamoDB table, its client built from the standard AWS environment
/// on the first call unless given.
#[derive(Debug)]
pub struct DynamoTable {
    name: String,
    client: tokio::sync::OnceCell<Client>,
}

impl DynamoTable {
    pub fn from_env(name: String) -> DynamoTable {
        DynamoTable {
            name,
            client: tokio::sync::OnceCell::new(),
        }
    }

    pub fn new(name: String, client: Client) -> DynamoTable {
        DynamoTable {
            name,
            client: tokio::sync::OnceCell::new_with(Some(client)),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let sdk = crate::wiring::sdk_config_from_env().await;
                client_for(&sdk)
            })
            .await
    }
}

/// A DynamoDB client for the fleet's table: calls bounded in time, and one
/// retry at most (a throttled table is not waited for: the batch goes on
/// without it).
pub fn client_for(sdk: &aws_config::SdkConfig) -> Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .operation_timeout(CALL_TIMEOUT)
                .operation_attempt_timeout(CALL_TIMEOUT / 2)
                .build(),
        )
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(2))
        .build();
    Client::from_conf(config)
}

/// The SDK's answer to `operation`, or the error as one line.
async fn answer<T, E, R>(
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, SdkError<E, R>>>,
) -> Result<T, StateError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => Err(StateError::timeout(operation)),
        Ok(Err(e)) => Err(from_sdk(operation, &e)),
        Ok(Ok(out)) => Ok(out),
    }
}

fn from_sdk<E, R>(operation: &'static str, e: &SdkError<E, R>) -> StateError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = match e.code() {
        Some(code) => format!("{code}: {}", e.message().unwrap_or("no message")),
        None => DisplayErrorContext(e).to_string(),
    };
    StateError {
        operation,
        detail: crate::policy::one_line(&detail, 300),
    }
}

fn key_item(key: &Key) -> Item {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(key.pk.clone())),
        ("sk".to_owned(), AttributeValue::S(key.sk.clone())),
    ])
}

impl Table for DynamoTable {
    fn get(&self, key: Key) -> Call<'_, Option<Item>> {
        Box::pin(async move {
            let call = self
                .client()
                .await
                .get_item()
                .table_name(&self.name)
                .set_key(Some(key_item(&key)))
                .consistent_read(true)
                .send();
            Ok(answer("GetItem", call).await?.item)
        })
    }

    fn update(&self, update: Update) -> Call<'_, Option<Item>> {
        Box::pin(async move {
            let mut words = Expression::default();
            let changes = words.changes(&update.changes);
            let condition = update.condition.as_ref().map(|c| words.condition(c));
            let call = self
                .client()
                .await
                .update_item()
                .table_name(&self.name)
                .set_key(Some(key_item(&update.key)))
                .update_expression(changes)
                .set_condition_expression(condition)
                .set_expression_attribute_names(Some(words.names))
                .set_expression_attribute_values(Some(words.values))
                .return_values(match update.returns {
                    Returns::Nothing => ReturnValue::None,
                    Returns::Old => ReturnValue::AllOld,
                    Returns::New => ReturnValue::AllNew,
                })
                .send();
            Ok(answer("UpdateItem", call).await?.attributes)
        })
    }

    fn put_batch(&self, items: Vec<Item>) -> Call<'_, Vec<Item>> {
        Box::pin(async move {
            let requests: Vec<WriteRequest> = items
                .into_iter()
                .filter_map(|item| {
                    let put = PutRequest::builder().set_item(Some(item)).build().ok()?;
                    Some(WriteRequest::builder().put_request(put).build())
                })
                .collect();
            let call = self
                .client()
                .await
                .batch_write_item()
                .request_items(&self.name, requests)
                .send();
            let out = answer("BatchWriteItem", call).await?;
            Ok(out
                .unprocessed_items
                .and_then(|mut u| u.remove(&self.name))
                .unwrap_or_default()
                .into_iter()
                .filter_map(|w| Some(w.put_request?.item))
                .collect())
        })
    }

    fn get_batch(&self, keys: Vec<Key>) -> Call<'_, Vec<Item>> {
        Box::pin(async move {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(keys.iter().map(key_item).collect()))
                .consistent_read(true)
                .build()
                .map_err(|e| StateError {
                    operation: "BatchGetItem",
                    detail: e.to_string(),
                })?;
            let call = self
                .client()
                .await
                .batch_get_item()
                .request_items(&self.name, request)
                .send();
            let out = answer("BatchGetItem", call).await?;
            let unprocessed = out
                .unprocessed_keys
                .as_ref()
                .and_then(|u| u.get(&self.name))
                .is_some_and(|k| !k.keys().is_empty());
            if unprocessed {
                return Err(StateError {
                    operation: "BatchGetItem",
                    detail: "keys left unprocessed".into(),
                });
            }
            Ok(out
                .responses
                .and_then(|mut r| r.remove(&self.name))
                .unwrap_or_default())
        })
    }

    fn query(&self, pk: String, prefix: String) -> Call<'_, Vec<Item>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut start = None;
            loop {
                let call = self
                    .client()
                    .await
                    .query()
                    .table_name(&self.name)
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                    .expression_attribute_values(":prefix", AttributeValue::S(prefix.clone()))
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take())
                    .send();
                let page = answer("Query", call).await?;
                out.extend(page.items().iter().cloned());
                match page.last_evaluated_key {
                    Some(key) if !key.is_empty() => start = Some(key),
                    _ => return Ok(out),
                }
            }
        })
    }
}

/// An update or condition written as DynamoDB expressions: every
/// attribute name and value a placeholder (no reserved-word clashes).
#[derive(Debug, Default)]
struct Expression {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expression {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{attribute}");
        self.names.insert(placeholder.clone(), attribute.to_owned());
        placeholder
    }

    fn value(&mut self, value: &AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value.clone());
        placeholder
    }

    /// `SET a = :v, … ADD b :v, … REMOVE c, …`
    fn changes(&mut self, changes: &[Change]) -> String {
        let (mut set, mut add, mut remove) = (Vec::new(), Vec::new(), Vec::new());
        for change in changes {
            match change {
                Change::Set(a, v) => set.push(format!("{} = {}", self.name(a), self.value(v))),
                Change::Add(a, v) => add.push(format!("{} {}", self.name(a), self.value(v))),
                Change::Remove(a) => remove.push(self.name(a)),
            }
        }
        [("SET", set), ("ADD", add), ("REMOVE", remove)]
            .into_iter()
            .filter(|(_, parts)| !parts.is_empty())
            .map(|(word, parts)| format!("{word} {}", parts.join(", ")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn condition(&mut self, condition: &Condition) -> String {
        match condition {
            Condition::Exists(a) => format!("attribute_exists({})", self.name(a)),
            Condition::Missing(a) => format!("attribute_not_exists({})", self.name(a)),
            Condition::Equals(a, v) => format!("{} = {}", self.name(a), self.value(v)),
            Condition::Below(a, v) => format!("{} < {}", self.name(a), self.value(v)),
            Condition::AtMost(a, v) => format!("{} <= {}", self.name(a), self.value(v)),
            Condition::All(parts) => self.joined(parts, " AND "),
            Condition::Any(parts) => self.joined(parts, " OR "),
        }
    }

    fn joined(&mut self, parts: &[Condition], word: &str) -> String {
        let parts: Vec<String> = parts.iter().map(|p| self.condition(p)).collect();
        format!("({})", parts.join(word))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_is_written_with_placeholders_for_every_name_and_value() {
        let mut e = Expression::default();
        let n = |v: u32| AttributeValue::N(v.to_string());
        let changes = e.changes(&[
            Change::Set("probeUntil", n(5)),
            Change::Add("failures", n(1)),
            Change::Remove("prober"),
            Change::Remove("openUntil"),
        ]);
        assert_eq!(
            changes,
            "SET #probeUntil = :v0 ADD #failures :v1 REMOVE #prober, #openUntil"
        );
        let condition = e.condition(&Condition::All(vec![
            Condition::Any(vec![
                Condition::Missing("probeUntil"),
                Condition::Below("probeUntil", n(9)),
            ]),
            Condition::AtMost("openUntil", n(9)),
        ]));
        assert_eq!(
            condition,
            "((attribute_not_exists(#probeUntil) OR #probeUntil < :v2) AND #openUntil <= :v3)"
        );
        assert_eq!(e.values.len(), 4);
        assert_eq!(e.names["#failures"], "failures");
    }
}
