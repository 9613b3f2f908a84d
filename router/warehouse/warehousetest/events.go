// Package warehousetest is the test suite every warehouse dialect runs
// against its real database (Run), with the Segment spec's example events
// and a TCP proxy that cuts connections.
package warehousetest

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/sluice-cdi/sluice/router"
)

// The Segment spec's examples (segment.com/docs/connections/spec), as an
// SDK sends them and ingest stores them.
const (
	SpecTrack = `{"anonymousId":"23adfd82-aa0f-45a7-a756-24f2a7a4c895","context":{"library":{"name":"analytics.js","version":"2.11.1"},
"page":{"path":"/academy/","referrer":"","search":"","title":"Analytics Academy","url":"https://segment.com/academy/"},
"userAgent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_5)","ip":"108.0.78.21"},"event":"Course Clicked",
"integrations":{},"messageId":"ajs-f8ca1e4de5024d9430b3928bd8ac6b96","properties":{"title":"Intro to Analytics",
"price":19.99,"lessons":12,"tags":["intro","free"],"teacher":{"firstName":"Ada","rating":4}},"receivedAt":"2015-12-12T19:11:01.266Z",
"sentAt":"2015-12-12T19:11:01.169Z","timestamp":"2015-12-12T19:11:01.249Z","type":"track","userId":"AiUGstSDIg",
"originalTimestamp":"2015-12-12T19:11:01.152Z"}`
	SpecIdentify = `{"anonymousId":"507f191e810c19729de860ea","channel":"browser","context":{"ip":"8.8.8.8",
"userAgent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_2)"},"integrations":{"All":false,"Mixpanel":true},
"messageId":"022bb90c-bbac-11e4-8dfc-aa07a5b093db","receivedAt":"2015-02-23T22:28:55.387Z","sentAt":"2015-02-23T22:28:55.111Z",
"timestamp":"2015-02-23T22:28:55.111Z","traits":{"name":"Peter Gibbons","email":"peter@example.com","plan":"premium",
"logins":5,"address":{"street":"6th St","city":"San Francisco","state":"CA","postalCode":"94103","country":"USA"}},
"type":"identify","userId":"97980cfea0067","version":"1.1"}`
	SpecPage = `{"anonymousId":"507f191e810c19729de860ea","channel":"browser","context":{"ip":"8.8.8.8",
"userAgent":"Mozilla/5.0"},"integrations":{},"messageId":"ajs-page-1","name":"Home","properties":{"title":"Welcome | Initech",
"url":"http://www.example.com","path":"/","referrer":"http://www.google.com"},"receivedAt":"2015-02-23T22:28:55.387Z",
"sentAt":"2015-02-23T22:28:55.111Z","timestamp":"2015-02-23T22:28:55.111Z","type":"page","userId":"97980cfea0067"}`
	SpecScreen = `{"anonymousId":"3a12eab0-bca7-11e4-8dfc-aa07a5b093db","channel":"mobile","context":{"app":{"name":"ShoppingApp",
"version":"1.0.0","build":"3"},"os":{"name":"iOS","version":"8.1.3"}},"messageId":"screen-1","name":"Home",
"properties":{"variation":"blue signup button"},"receivedAt":"2015-02-23T22:28:55.387Z","sentAt":"2015-02-23T22:28:55.111Z",
"timestamp":"2015-02-23T22:28:55.111Z","type":"screen","userId":"97980cfea0067"}`
	SpecGroup = `{"anonymousId":"507f191e810c19729de860ea","channel":"browser","context":{"ip":"8.8.8.8"},
"groupId":"0e8c78ea9d97a7b8185e8632","messageId":"022bb90c-bbac-11e4-8dfc-aa07a5b093dc","receivedAt":"2015-02-23T22:28:55.387Z",
"sentAt":"2015-02-23T22:28:55.111Z","timestamp":"2015-02-23T22:28:55.111Z","traits":{"name":"Initech","industry":"Technology",
"employees":329,"plan":"enterprise","total billed":830},"type":"group","userId":"97980cfea0067"}`
	SpecAlias = `{"anonymousId":"507f191e810c19729de860ea","channel":"browser","context":{"ip":"8.8.8.8"},
"messageId":"022bb90c-bbac-11e4-8dfc-aa07a5b093dd","previousId":"39239-239239-239239-23923","receivedAt":"2015-02-23T22:28:55.387Z",
"sentAt":"2015-02-23T22:28:55.111Z","timestamp":"2015-02-23T22:28:55.111Z","type":"alias","userId":"507f191e81011"}`
)

// Event wraps a stored payload as the router hands it over.
func Event(seq uint64, source, payload string) router.Event {
	var p struct {
		MessageID   string `json:"messageId"`
		Type        string `json:"type"`
		UserID      string `json:"userId"`
		AnonymousID string `json:"anonymousId"`
	}
	_ = json.Unmarshal([]byte(payload), &p)
	key := p.AnonymousID
	if key == "" {
		key = p.UserID
	}
	return router.Event{Seq: seq, MessageID: []byte(p.MessageID), Key: []byte(key), Type: []byte(p.Type),
		Source: []byte(source), ReceivedAt: time.Now().UnixNano(), Payload: []byte(payload)}
}

// Track is a track event's payload with the standard fields.
func Track(mid, user, event string, props map[string]any) string {
	return payload(map[string]any{"type": "track", "messageId": mid, "userId": user, "event": event, "properties": props})
}

// Identify is an identify's payload, received at recv.
func Identify(mid, user string, recv time.Time, traits map[string]any) string {
	return payload(map[string]any{"type": "identify", "messageId": mid, "userId": user, "traits": traits,
		"receivedAt": recv.UTC().Format(time.RFC3339Nano)})
}

func payload(m map[string]any) string {
	if _, ok := m["receivedAt"]; !ok {
		m["receivedAt"] = time.Now().UTC().Format(time.RFC3339Nano)
	}
	m["context"] = map[string]any{"library": map[string]any{"name": "analytics-go", "version": "3.1.0"}}
	m["anonymousId"] = "anon-" + fmt.Sprint(m["userId"])
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}
