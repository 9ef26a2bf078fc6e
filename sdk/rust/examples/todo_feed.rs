//! A server-side feed of the todo example's data, with the typed clients: lists the open
//! todos, adds one, and prints what the gateway pushes to the `todos` tag until interrupted.
//! Run it where an EDS backend and an MWS gateway are attached (their variables set):
//!
//! ```sh
//! EDS_ADDRESS=http://localhost:8080 EDS_BACKEND_ID=… EDS_SECRET=… \
//! MWS_ADDRESS=http://localhost:8080 MWS_GATEWAY_ID=… MWS_SECRET=… \
//!   cargo run -p mar-sdk --example todo_feed
//! ```

use mar_sdk::services::{Eds, Event, Mws, Query};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), mar_sdk::SdkError> {
    let eds = Eds::from_env()?;
    let mws = Mws::from_env()?;
    let todos = eds.collection("todos");
    for t in todos
        .find(
            &Query::new()
                .ne("done", true)
                .sort("createdAt", false)
                .limit(20),
        )
        .await?
    {
        println!("open: {}", t["title"]);
    }
    let added = todos
        .insert(json!({"title": "written by todo_feed", "done": false}))
        .await?;
    println!("added {}", added["id"]);
    // Anything published to the tag (`{"receivers":{"tags":["todos"]}}`) arrives here, and
    // what was published while the connection was down arrives after it comes back.
    let mut feed = mws.subscribe(&["todos"]);
    loop {
        match feed.next().await {
            Event::Message(m) => println!("pushed: {m}"),
            Event::Resync => println!("missed too much: reload"),
        }
    }
}
