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

/// Calls of one `BatchGetItem` read, the first and those for the keys it
/// left unprocessed.
const UNPROCESSED_TRIES: u32 = 3;
const UNPROCESSED_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

impl DynamoTable {
    /// One `BatchGetItem` call: the items found, and the keys left
    /// unprocessed.
    async fn get_batch_once(&self, keys: Vec<Item>) -> Result<(Vec<Item>, Vec<Item>), StateError> {
        let request = KeysAndAttributes::builder()
            .set_keys(Some(keys))
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
        let left = out
            .unprocessed_keys
            .and_then(|mut u| u.remove(&self.name))
            .map(|k| k.keys)
            .unwrap_or_default();
        let found = out
            .responses
            .and_then(|mut r| r.remove(&self.name))
            .unwrap_or_default();
        Ok((found, left))
    }
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

    /// One `BatchGetItem`; keys it leaves unprocessed (a hot partition)
    /// are asked again, up to [`UNPROCESSED_TRIES`] calls in all, with a
    /// short pause, and only then is the whole read an error: the items
    /// already returned must not be thrown away for one busy key.
    fn get_batch(&self, keys: Vec<Key>) -> Call<'_, Vec<Item>> {
        Box::pin(async move {
            let mut items = Vec::new();
            let mut pending: Vec<Item> = keys.iter().map(key_item).collect();
            for call in 0..UNPROCESSED_TRIES {
                if call > 0 {
                    tokio::time::sleep(UNPROCESSED_PAUSE * call).await;
                }
                let (found, left) = self.get_batch_once(pending).await?;
                items.extend(found);
                if left.is_empty() {
                    return Ok(items);
                }
                pending = left;
            }
            Err(StateError {
                operation: "BatchGetItem",
                detail: "keys left unprocessed".into(),
            })
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

#[cfg(test)]
mod unprocessed_tests {
    use super::*;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn key(pk: &str) -> serde_json::Value {
        serde_json::json!({"pk": {"S": pk}, "sk": {"S": "carried"}})
    }

    fn answer(found: &[&str], left: &[&str]) -> ResponseTemplate {
        let mut body = serde_json::json!({
            "Responses": {"t": found.iter().map(|pk| key(pk)).collect::<Vec<_>>()}
        });
        if !left.is_empty() {
            body["UnprocessedKeys"] = serde_json::json!({"t": {
                "Keys": left.iter().map(|pk| key(pk)).collect::<Vec<_>>(), "ConsistentRead": true}});
        }
        ResponseTemplate::new(200)
            .insert_header("content-type", "application/x-amz-json-1.0")
            .set_body_json(body)
    }

    /// A key DynamoDB leaves unprocessed (a hot partition) is asked again:
    /// the items it did return are kept, not thrown away with the call.
    #[tokio::test]
    async fn a_key_left_unprocessed_is_asked_again_and_the_rest_kept() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer(&["sqs#carried"], &["sqs#other-7"]))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(answer(&["sqs#other-7"], &[]))
            .mount(&server)
            .await;
        let client = Client::from_conf(
            aws_sdk_dynamodb::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
                .endpoint_url(server.uri())
                .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                    "x", "x", None, None, "test",
                ))
                .build(),
        );
        let table = DynamoTable::new("t".into(), client);
        let keys = vec![
            Key::new("sqs#carried", "carried"),
            Key::new("sqs#other-7", "carried"),
        ];
        let items = table.get_batch(keys).await.expect("read in two calls");
        let mut found: Vec<String> = items
            .iter()
            .filter_map(|i| match i.get("pk") {
                Some(AttributeValue::S(pk)) => Some(pk.clone()),
                _ => None,
            })
            .collect();
        found.sort();
        assert_eq!(found, ["sqs#carried", "sqs#other-7"]);
        assert_eq!(server.received_requests().await.unwrap().len(), 2);
    }
}
